"""JUnit XML that parses whatever text went into it.

A check's detail can quote the model's answer (any token, control bytes included) and a crash's log tail
can carry terminal colours (gdb's backtrace is styled, ``LLAMA_LOG_COLORS``). XML 1.0 allows neither
ESC nor most other control characters, even escaped: one of them makes the whole file unreadable to a CI
runner's JUnit parser. Colour sequences are dropped, any other such character is written as Python writes
it in a string (``\\x1b``, ``\\udc80``).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from llamactl.core.files import atomic_path
from llamactl.serve.server import ANSI

# what XML 1.0 does not allow (its Char production), surrogates included
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_text(text: str) -> str:
    """``text`` with terminal colour sequences removed and every character XML 1.0 forbids as ``\\xNN``."""
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}",
                        ANSI.sub("", text))


def write(tree: ET.ElementTree | ET.Element, path: Path) -> None:
    """Write ``tree`` to ``path`` (atomically, indented, UTF-8 with a declaration), every text, tail and
    attribute value made XML-safe first (:func:`xml_text`)."""
    root = tree.getroot() if isinstance(tree, ET.ElementTree) else tree
    assert root is not None
    for el in root.iter():
        if el.text:
            el.text = xml_text(el.text)
        if el.tail:
            el.tail = xml_text(el.tail)
        for k, v in el.attrib.items():
            el.attrib[k] = xml_text(v)
    out = ET.ElementTree(root)
    ET.indent(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        out.write(tmp, encoding="utf-8", xml_declaration=True)
