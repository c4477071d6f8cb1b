"""fedutils' package-level helpers."""
import os

import fedutils


def test_quiet_native_logs_hides_writes_to_fd_2_and_then_restores_it(capfd):
    with fedutils.quiet_native_logs():
        os.write(2, b"a C++ start-up notice\n")
    os.write(2, b"a real warning\n")
    err = capfd.readouterr().err
    assert "C++ start-up notice" not in err
    assert "a real warning" in err


def test_quiet_native_logs_restores_fd_2_when_the_block_raises(capfd):
    try:
        with fedutils.quiet_native_logs():
            raise KeyError("boom")
    except KeyError:
        pass
    os.write(2, b"still visible\n")
    assert "still visible" in capfd.readouterr().err
