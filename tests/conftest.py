"Shared test hooks: the bad-input suite's tally is printed at the end of the run (CI shows it)."

BAD_INPUTS = []   # (case id, gave its one-line message?) appended by tests/test_bad_inputs.py

def pytest_terminal_summary(terminalreporter):
    if BAD_INPUTS:
        ok = sum(good for _, good in BAD_INPUTS)
        terminalreporter.write_line(f"bad-input suite: {len(BAD_INPUTS)} inputs tried, {ok} gave their one-line message"
                                    + ('' if ok == len(BAD_INPUTS) else f"; not: {', '.join(c for c, good in BAD_INPUTS if not good)}"))
