#!/usr/bin/env python3
"""Trim pagila-data.sql (upstream, 3.3 MB) to under 3 MB, keeping referential integrity.

    python3 trim.py < upstream/pagila-data.sql > pagila-data.sql

Keeps the rentals with rental_id <= MAX_RENTAL and the payments of those rentals (payment is
the only table that references rental); every other table, and the setval() calls, are kept
as they are (the sequences stay ahead of the remaining rows).
"""
import sys

MAX_RENTAL = 12000

table = None
for line in sys.stdin:
    if line.startswith("COPY "):
        table = line.split()[1]
        sys.stdout.write(line)
        continue
    if line == "\\.\n":
        table = None
    elif table == "public.rental":
        if int(line.split("\t", 1)[0]) > MAX_RENTAL:
            continue
    elif table is not None and table.startswith("public.payment_p"):
        # payment_id, customer_id, staff_id, rental_id, amount, payment_date
        if int(line.split("\t")[3]) > MAX_RENTAL:
            continue
    sys.stdout.write(line)
