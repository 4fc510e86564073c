#!/usr/bin/env bash
# make demo: the pipeline on the embedded tiny model.
set -eu
BUILD=${1:-build}
echo "demo: nothing yet"
