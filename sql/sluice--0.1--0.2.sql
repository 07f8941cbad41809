\echo Use "ALTER EXTENSION sluice UPDATE TO '0.2'" to load this file. \quit
