# dmlcli developer targets. Every target installs into $(VENV) first, so each works on a fresh clone.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test bench bench-deps hostile seed004 bytes-to-gap straggler soak sweep-3x5 lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[mpi,test]'
	# Byte-compiled as a regular pip install would be: under PYTHONDONTWRITEBYTECODE every rank would
	# otherwise compile dmlcli's modules again on every run (about 0.35 s of a 4-worker start-up).
	$(BIN)/python -m compileall -q dmlcli
	touch $(STAMP)

# ssgd on builtin breast_cancer, 4 workers; dmlcli starts MPI itself (no mpirun).
demo: install
	$(BIN)/dmlcli train ssgd --data breast_cancer --workers 4 --batch-size all --rounds 500 --out runs/demo/

test: install
	$(BIN)/python -m pytest -q

# Every performance figure (overhead against bare mpi4py, torch.distributed, PySpark, asynchronous
# throughput, memory, start-up, data loading, scaling); writes BENCHMARKS.md. One section alone:
# make bench SECTION=startup (repeat with SECTION="startup memory"). QUICK=1 uses small grids.
bench: install
	$(BIN)/python tests/bench/run_bench.py $(foreach s,$(SECTION),--section $(s)) $(if $(QUICK),--quick)

# The optional peers of make bench (torch for section 2, pyspark for section 3); without them those sections say so.
bench-deps: install
	$(BIN)/python -m pip install --quiet -e '.[mpi,test,bench]'

# Hostile inputs against the real command line (exit codes, one-line errors, nothing written); writes runs/hostile.md.
# Then 20 pairs of runs started together into one directory, and the signal matrix (the suite runs 5 pairs).
hostile: install
	$(BIN)/python tests/hostile/run_hostile.py
	DMLCLI_COLLISION_PAIRS=20 $(BIN)/python -m pytest -q tests/test_launcher.py

# Seed 004's experiment (ssgd, ma, bmuf, easgd on breast_cancer) over seeds 0-9, raw and standardised; writes runs/seed004.md.
seed004: install
	$(BIN)/python recipes/seed004.py --out runs/seed004.md

# Bytes sent to a relative gap of 1e-3, ssgd against compressed ssgd and diana (d = 1000, mpiexec -n 5); writes runs/bytes-to-gap.md.
bytes-to-gap: install
	$(BIN)/python recipes/bytes_to_gap.py --out runs/bytes-to-gap.md

# Wall-clock time to a relative gap of 1e-3 with one 5x straggler among 4 workers and with none: ssgd, ssgd --backup 1,
# ssp (s = 3), asgd, aeasgd (mpiexec -n 5, 3 interleaved seeds); writes runs/straggler.md, the CSVs in runs/straggler/
# and the plot docs/straggler.png (128 colours, to stay small).
straggler: install
	$(BIN)/python recipes/straggler.py --out runs/straggler.md --runs runs/straggler/
	$(BIN)/dmlcli plot runs/straggler/ --x wall_s --y gap --reference $$(sed -n 's/.*(F\* = \([0-9.]*\)).*/\1/p' runs/straggler.md) \
	  -o docs/straggler.png --title "time to gap, 4 workers, with and without one 5x straggler"
	$(BIN)/python -c "from PIL import Image; Image.open('docs/straggler.png').convert('RGB').quantize(128).save('docs/straggler.png', optimize=True)"

# 200 seeded runs of the asynchronous algorithms with random delays, dropout, crashes and hangs on 2-6 ranks: each must
# end with the exit code its case predicts, nothing may hang (the suite runs 4 of them); writes runs/soak.md.
soak: install
	$(BIN)/python recipes/soak.py --cases 200 --out runs/soak.md

# ssgd, ma and asgd over seeds 0-4 (recipes/sweep3x5/), each sweep inside one mpiexec -n 5, then the compare table
# (runs/sweep3x5.md, F* the reference solver's) and the plot docs/sweep-3x5.png of the gap against wall time.
sweep-3x5: install
	for algorithm in ssgd ma asgd; do \
	  $(BIN)/mpiexec -n 5 $(BIN)/dmlcli sweep recipes/sweep3x5/$$algorithm.toml --out runs/sweep3x5/ || exit 1; done
	F=$$($(BIN)/python -c "import sys; sys.path.insert(0, 'recipes'); from experiment import optimum; \
	  print(repr(optimum(lam=0.01, test_fraction=0.0)))") && \
	$(BIN)/dmlcli compare runs/sweep3x5/ --reference $$F --target-gap 1e-2 --format markdown | tee runs/sweep3x5.md && \
	$(BIN)/dmlcli plot runs/sweep3x5/ --x wall_s --y gap --reference $$F -o docs/sweep-3x5.png \
	  --title "ssgd, ma (M = 5), asgd: breast_cancer, 4 workers, seeds 0-4"

lint: install
	$(BIN)/python -m pip install --quiet ruff
	$(BIN)/ruff check dmlcli tests recipes

clean:
	rm -rf $(VENV) runs build *.egg-info
