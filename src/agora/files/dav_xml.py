"""WebDAV's XML: reading request bodies safely and writing multistatus replies.

Request bodies are parsed with the standard library's expat after refusing any document
type declaration, so no entity (internal or external) is ever expanded: a DAV body never
needs one. Nesting is capped too (files.dav_max_xml_depth): expat builds any depth, but
what is done with a tree afterwards (writing a dead property back out) recurses. Replies are written as text, with the ``D:`` prefix for ``DAV:``; a dead
property is stored as a self-contained XML element (it declares its own namespaces), so
it is embedded in a reply as it is.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import quote
from xml.sax.saxutils import escape, quoteattr

from agora.core.errors import InvalidInput

DAV = "DAV:"
XML_DECLARATION = '<?xml version="1.0" encoding="utf-8"?>\n'
MEDIA_TYPE = "application/xml; charset=utf-8"
MAX_NAME_CHARS = 512  # namespace plus local name of one property


def clark(namespace: str, name: str) -> str:
    return f"{{{namespace}}}{name}" if namespace else name


def split_clark(tag: str) -> tuple[str, str]:
    if tag.startswith("{"):
        namespace, _, name = tag[1:].partition("}")
        return namespace, name
    return "", tag


def parse(body: bytes, max_depth: int) -> ET.Element | None:
    """The root element of a request body, or None when the body is empty; InvalidInput
    for one nested deeper than ``max_depth`` elements."""
    if not body.strip():
        return None
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput("XML request bodies must be UTF-8") from None
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise InvalidInput("document type declarations are not accepted")
    # The encoding is fixed to what was checked above, whatever the XML declaration says,
    # so no other encoding can hide a declaration from that check.
    parser = ET.XMLParser(encoding="utf-8")
    try:
        parser.feed(text.encode())
        root = parser.close()
    except ET.ParseError as error:
        raise InvalidInput(f"the request body is not well-formed XML: {error}") from None
    # Walked with a stack of our own: the depth is what must not reach Python's recursion.
    stack = [(root, 1)]
    while stack:
        element, depth = stack.pop()
        if depth > max_depth:
            raise InvalidInput(f"XML request bodies may nest elements at most {max_depth} deep")
        stack.extend((child, depth + 1) for child in element)
    return root


def fragment(element: ET.Element) -> str:
    """One element as standalone XML text (what follows it is not part of it)."""
    tail, element.tail = element.tail, None
    try:
        return ET.tostring(element, encoding="unicode")
    finally:
        element.tail = tail


def inner(element: ET.Element) -> str:
    """The content of an element as XML text: its text and its children."""
    return escape(element.text or "") + "".join(ET.tostring(child, encoding="unicode") for child in element)


# -- request bodies -----------------------------------------------------------------

@dataclass
class PropfindRequest:
    kind: str  # "allprop", "propname" or "prop"
    names: list[str]  # Clark names: the <prop> asked for, or allprop's <include>


def propfind_request(root: ET.Element | None) -> PropfindRequest:
    if root is None:
        return PropfindRequest("allprop", [])
    if root.tag != clark(DAV, "propfind"):
        raise InvalidInput("a PROPFIND body is a DAV:propfind element")
    kind, names = None, []
    for child in root:
        if child.tag == clark(DAV, "prop"):
            kind, names = "prop", [_checked_name(prop.tag) for prop in child]
        elif child.tag == clark(DAV, "propname"):
            kind = "propname"
        elif child.tag == clark(DAV, "allprop"):
            kind = "allprop"
        elif child.tag == clark(DAV, "include"):
            names = [_checked_name(prop.tag) for prop in child]
        # Other elements are extensions we do not know: ignored, as RFC 4918 asks.
    if kind is None:
        raise InvalidInput("DAV:propfind needs DAV:prop, DAV:propname or DAV:allprop")
    return PropfindRequest(kind, names if kind != "propname" else [])


def propertyupdate_request(root: ET.Element | None) -> list[tuple[str, str, ET.Element]]:
    """The (``set`` | ``remove``, Clark name, property element) operations, in document
    order: a later operation on the same property wins."""
    if root is None or root.tag != clark(DAV, "propertyupdate"):
        raise InvalidInput("a PROPPATCH body is a DAV:propertyupdate element")
    operations = []
    for instruction in root:
        if instruction.tag not in (clark(DAV, "set"), clark(DAV, "remove")):
            continue
        action = split_clark(instruction.tag)[1]
        for prop in instruction.findall(clark(DAV, "prop")):
            for element in prop:
                operations.append((action, _checked_name(element.tag), element))
    if not operations:
        raise InvalidInput("DAV:propertyupdate names no property")
    return operations


def lockinfo_request(root: ET.Element) -> tuple[str, str]:
    """(scope, owner as XML text) of a DAV:lockinfo body; only write locks exist."""
    if root.tag != clark(DAV, "lockinfo"):
        raise InvalidInput("a LOCK body is a DAV:lockinfo element")
    scope_element = root.find(clark(DAV, "lockscope"))
    type_element = root.find(clark(DAV, "locktype"))
    if scope_element is None or len(scope_element) != 1 or type_element is None:
        raise InvalidInput("DAV:lockinfo needs DAV:lockscope and DAV:locktype")
    scope = scope_element[0].tag
    if scope not in (clark(DAV, "exclusive"), clark(DAV, "shared")):
        raise InvalidInput("the lock scope is DAV:exclusive or DAV:shared")
    if [child.tag for child in type_element] != [clark(DAV, "write")]:
        raise InvalidInput("only DAV:write locks exist")
    owner = root.find(clark(DAV, "owner"))
    return split_clark(scope)[1], inner(owner) if owner is not None else ""


def _checked_name(tag: str) -> str:
    if len(tag) > MAX_NAME_CHARS:
        raise InvalidInput(f"property names are at most {MAX_NAME_CHARS} characters")
    return tag


# -- replies --------------------------------------------------------------------------

def href(root_path: str, path: str, is_dir: bool) -> str:
    """The URL path of a virtual path, percent-encoded; collections end with '/'."""
    url = root_path + quote(path, safe="/!$&'()*+,;=:@-._~")
    if is_dir and not url.endswith("/"):
        url += "/"
    return escape(url)


def element(name: str, content: str = "") -> str:
    """A property element for Clark ``name`` with XML ``content``."""
    namespace, local = split_clark(name)
    if namespace == DAV:
        tag, declaration = f"D:{local}", ""
    elif namespace:
        tag, declaration = f"ns:{local}", f" xmlns:ns={quoteattr(namespace)}"
    else:
        tag, declaration = local, ""
    if not content:
        return f"<{tag}{declaration}/>"
    return f"<{tag}{declaration}>{content}</{tag}>"


def status_line(code: int) -> str:
    return f"<D:status>HTTP/1.1 {code} {HTTPStatus(code).phrase}</D:status>"


def response(url: str, propstats: dict[int, list[str]]) -> str:
    """One DAV:response: per status, the property elements that have it."""
    parts = [f"<D:response><D:href>{url}</D:href>"]
    for code, props in sorted(propstats.items()):
        if props:
            parts.append(f"<D:propstat><D:prop>{''.join(props)}</D:prop>{status_line(code)}</D:propstat>")
    parts.append("</D:response>")
    return "".join(parts)


def status_response(url: str, code: int) -> str:
    return f"<D:response><D:href>{url}</D:href>{status_line(code)}</D:response>"


def multistatus(responses: list[str]) -> bytes:
    # Encoded one response at a time: for 100,000 files, joining and encoding the whole
    # text were single steps of tenths of a second that held every thread's GIL.
    return b"".join([(XML_DECLARATION + '<D:multistatus xmlns:D="DAV:">').encode(),
                     *(r.encode() for r in responses), b"</D:multistatus>"])


def error_body(condition: str, content: str = "") -> bytes:
    """An RFC 4918 precondition/postcondition error body."""
    return (XML_DECLARATION + f'<D:error xmlns:D="DAV:">{element(clark(DAV, condition), content)}'
            "</D:error>").encode()


def prop_body(content: str) -> bytes:
    return (XML_DECLARATION + f'<D:prop xmlns:D="DAV:">{content}</D:prop>').encode()
