//! An uploaded batch input file: JSONL lines checked one by one (not built yet).
