"""datetime for the modules a `ban` process loads: the C module the standard datetime re-exports.

The datetime module defines every class in Python first and then replaces them with _datetime's:
importing it costs a `ban` process about a millisecond, _datetime alone a third of that. The
classes are the same objects either way (datetime.datetime is _datetime.datetime), so values
pass freely between this and code that imports datetime. Where there is no C module (another
Python implementation), it is the datetime module itself.
"""

TYPE_CHECKING = False  # typing stays unimported at run time (see __init__)
if TYPE_CHECKING:
    import datetime as datetime
else:
    try:
        import _datetime as datetime
    except ImportError:
        import datetime

__all__ = ["datetime"]
