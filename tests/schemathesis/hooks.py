"""Schemathesis hooks for `rtdetr serve` (loaded by run.sh through SCHEMATHESIS_HOOKS).

The schema can only say "image: a string" and "classes: strings"; almost nothing schemathesis
draws for them is a decodable image or a label of the served model, and the served model name
is one fixed string. Left alone, every schema-valid request to the inference routes would be
refused with a 4xx for reasons the schema cannot express, so `positive_data_acceptance` would
only report that, and the 200 answers (DetectionResponse, ChatCompletionResponse, the
text/event-stream chunks) would never be checked against their schemas.

So every *positive* case of those routes gets a real fixture image (a data URL, raw base64 or
a multipart file) and real class labels (as many as were drawn), and the chat messages are
replaced by realistic ones (text and image_url parts) for the served model name, streamed or
not; every other field (threshold, max_detections, return_image, stream_options, unknown extra
fields) stays as schemathesis drew it from the schema. A schema-valid request refused with 4xx is then
a real mismatch between the server and its OpenAPI description. Negative cases are left alone,
so `negative_data_rejection` still sees only invalid data.
"""

import base64
import json
import os
import pathlib

import schemathesis
from hypothesis import strategies as st
from schemathesis.transport.serialization import Binary  # how schemathesis itself carries format: binary

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL_DIR = pathlib.Path(os.environ.get("RTDETR_MODEL_DIR", ROOT / "crates/rtdetr/tests/fixtures/tiny-bottleneck"))
IMAGES_DIR = ROOT / "crates/rtdetr/tests/fixtures/images"
MODEL = os.environ.get("RTDETR_MODEL_NAME", MODEL_DIR.name)
LABELS = sorted(json.loads((MODEL_DIR / "config.json").read_text())["id2label"].values())

# The two smallest fixture images (about 9 KB each): a PNG and an EXIF-rotated JPEG.
FILES = [
    ("image/png", (IMAGES_DIR / "gray.png").read_bytes()),
    ("image/jpeg", (IMAGES_DIR / "photo_exif.jpg").read_bytes()),
]
DATA_URLS = [f"data:{mime};base64,{base64.b64encode(b).decode()}" for mime, b in FILES]
RAW_BASE64 = [base64.b64encode(b).decode() for _, b in FILES]

JSON_IMAGE = st.sampled_from(DATA_URLS + RAW_BASE64)
FILE_IMAGE = st.sampled_from([b for _, b in FILES]).map(Binary)
TEXT_PART = st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=20)})
IMAGE_PART = st.sampled_from(DATA_URLS).map(lambda u: {"type": "image_url", "image_url": {"url": u}})
MESSAGES = st.tuples(st.lists(TEXT_PART | IMAGE_PART, max_size=3), IMAGE_PART).map(
    lambda t: [{"role": "user", "content": t[0] + [t[1]]}]  # at least one image
)


UNWRITABLE_IN_FIELD_NAMES = {chr(c) for c in range(0x20)} | {"\x7f", '"', "\\"}


def _mode(case):
    meta = getattr(case, "meta", None) or getattr(case, "_meta", None)
    return None if meta is None else str(meta.generation.mode)


def _positive(case):
    return _mode(case) == "positive"


def _labels_like(drawn):
    """Real labels in place of drawn class names (as many, at most all of them)."""
    if isinstance(drawn, list):
        return st.lists(st.sampled_from(LABELS), min_size=min(len(drawn), len(LABELS)),
                        max_size=min(len(drawn), len(LABELS)), unique=True)
    if isinstance(drawn, str):  # the multipart form: comma-separated names
        if not drawn.strip(" ,"):
            return st.just(drawn)  # no name at all stays so (the server refuses it: 422)
        return st.lists(st.sampled_from(LABELS), min_size=1, max_size=3, unique=True).map(",".join)
    return st.just(drawn)  # null or absent


def _integral_counts(body):
    """JSON Schema (2020-12) counts 5.0 as an integer and schemathesis sometimes draws one for
    `max_detections`; the server's serde `usize` refuses it (422). No client sends a count as
    5.0, and a schema cannot exclude it, so it is sent as 5: this one mismatch is reported,
    not tested."""
    value = body.get("max_detections")
    if isinstance(value, float) and value.is_integer():
        return {**body, "max_detections": int(value)}
    return body


def _with_body(case, body):
    # The drawn case is used for this one example only, so it may be changed in place;
    # schemathesis re-validates a case whose containers a hook changed (so a JSON body stays
    # positive only if it still matches the schema).
    if case.media_type == "multipart/form-data":
        # But schemathesis 4 re-validates any body holding a binary payload as invalid
        # (`contains_binary` in Case._validate_component), so a file field documented as
        # `format: binary` would turn every realistic multipart case negative and
        # `negative_data_rejection` would then fail on the 200s. The multipart case stays as
        # generated: positive, with the file swapped for another file and the class names for
        # other class names (the rest of the form is untouched).
        object.__setattr__(case, "body", body)
    else:
        case.body = body
    return case


@schemathesis.hook("flatmap_case").apply_to(path="/v1/detections", method="POST")
def real_image_and_labels(ctx, case):
    if not _positive(case) or not isinstance(case.body, dict):
        return st.just(case)
    body = dict(case.body)
    if case.media_type == "multipart/form-data":
        # A form field's name travels in a quoted-string of its part's Content-Disposition
        # header, where control characters, quotes and line breaks cannot be written:
        # schemathesis writes them raw, so the part headers are malformed on the wire and the
        # server rightly answers 400 `invalid_multipart`. Such extra fields are dropped.
        body = {k: v for k, v in body.items() if not any(c in k for c in UNWRITABLE_IN_FIELD_NAMES)}
    image = FILE_IMAGE if case.media_type == "multipart/form-data" else JSON_IMAGE
    parts = {"image": image}
    if "classes" in body:
        parts["classes"] = _labels_like(body["classes"])
    return st.fixed_dictionaries(parts).map(lambda new: _with_body(case, _integral_counts({**body, **new})))


@schemathesis.hook("flatmap_case").apply_to(path="/v1/chat/completions", method="POST")
def real_messages_and_model(ctx, case):
    if not _positive(case) or not isinstance(case.body, dict):
        return st.just(case)
    body = dict(case.body)
    parts = {
        "messages": MESSAGES,
        # Another model name is answered 404 `model_not_found`, which the coverage phase and
        # the negative cases already see plenty of.
        "model": st.just(MODEL),
        # `stream` is drawn from true/false/null/absent; true answers text/event-stream,
        # whose chunks are checked too: make it about half of the cases.
        "stream": st.booleans(),
    }
    if "classes" in body:
        parts["classes"] = _labels_like(body["classes"])
    return st.fixed_dictionaries(parts).map(lambda new: _with_body(case, _integral_counts({**body, **new})))


@schemathesis.hook("filter_case").apply_to(path="/v1/detections", method="POST")
def no_empty_form_values(ctx, case):
    # A negative multipart case whose only violation is a field turned into an empty array
    # (or object) sends no part at all for that field: the request on the wire is valid and
    # is rightly answered 200, which `negative_data_rejection` would report as accepting
    # invalid data. Those cases are dropped. (Non-empty arrays are sent as a repeated field
    # and still tested.)
    if case.media_type != "multipart/form-data" or _positive(case) or not isinstance(case.body, dict):
        return True
    return not any(v in ([], {}) for v in case.body.values())


@schemathesis.hook("flatmap_path_parameters").apply_to(path="/v1/models/{model}", method="GET")
def sometimes_the_served_model(ctx, path_parameters):
    # About half of the draws ask for the served model (200), the rest keep what was drawn (404).
    if not isinstance(path_parameters, dict):
        return st.just(path_parameters)
    return st.one_of(st.just(path_parameters), st.just({**path_parameters, "model": MODEL}))


# --- no image URL is ever fetched ----------------------------------------------------------


def _inline(value):
    """A URL in an image position becomes the fixture image inline (a data URL)."""
    if isinstance(value, str) and not isinstance(value, Binary) and "://" in value:
        return DATA_URLS[0]
    return value


def _inline_image_urls(body, media_type):
    if not isinstance(body, dict):
        return body
    out = dict(body)
    for key in ("image", "file"):  # /v1/detections, JSON or a multipart text field
        if key in out:
            out[key] = _inline(out[key])
    messages = out.get("messages")
    if isinstance(messages, list):  # /v1/chat/completions
        out["messages"] = [dict(m) if isinstance(m, dict) else m for m in messages]
        for m in out["messages"]:
            if isinstance(m, dict) and isinstance(m.get("content"), list):
                m["content"] = [dict(p) if isinstance(p, dict) else p for p in m["content"]]
                for part in m["content"]:
                    if not isinstance(part, dict):
                        continue
                    iu = part.get("image_url")
                    if isinstance(iu, dict) and "url" in iu:
                        part["image_url"] = {**iu, "url": _inline(iu["url"])}
                    elif "image_url" in part:
                        part["image_url"] = _inline(iu)
    return out


@schemathesis.hook
def before_call(ctx, case, kwargs):
    # The server downloads http(s) image URLs. It runs without --allow-private-urls, and the
    # network of this machine reaches nothing, but a test must not even try to reach another
    # host: a drawn string that looks like a URL, in a place where the server would fetch it,
    # is replaced by the same fixture image inline (still a valid image, so the case keeps
    # its positive or negative mode).
    body = getattr(case, "body", None)
    new = _inline_image_urls(body, case.media_type)
    if new == body:
        return
    if case.media_type == "multipart/form-data":
        # as in _with_body: keep schemathesis from re-validating a binary body as invalid
        object.__setattr__(case, "body", new)
        case._sync_validated_hashes()
    else:
        case.body = new


# --- bookkeeping and extra checks -------------------------------------------------------

import atexit  # noqa: E402
import collections  # noqa: E402
import threading  # noqa: E402

_LOCK = threading.Lock()
_STATUSES = collections.Counter()  # (operation, status, media type) -> responses
_NETWORK_ERRORS = collections.Counter()  # operation -> requests without a response


def _header(response, name):
    # schemathesis' Response: lowercase keys, list values.
    values = response.headers.get(name) or [""]
    return values[0] if isinstance(values, list) else values


def _media(response):
    return _header(response, "content-type").split(";")[0].strip()


def _error_code(response):
    if response.status_code < 400:
        return None
    try:
        error = json.loads(response.content)["error"]
        return f"{error.get('code')} ({error.get('param')})" if error.get("param") else error.get("code")
    except Exception:
        return "(not the error shape)"


@schemathesis.hook
def after_call(ctx, case, response):
    with _LOCK:
        mode = _mode(case)
        _STATUSES[(case.operation.label, mode, response.status_code, _media(response), _error_code(response))] += 1


@schemathesis.hook
def after_network_error(ctx, case, request):
    with _LOCK:
        _NETWORK_ERRORS[case.operation.label] += 1


@atexit.register
def _write_stats():
    path = os.environ.get("RTDETR_ST_STATS")
    if not path:
        return
    rows = [
        {"operation": op, "mode": mode, "status": status, "content_type": ct, "error": err, "responses": n}
        for (op, mode, status, ct, err), n in sorted(_STATUSES.items(), key=str)
    ]
    pathlib.Path(path).write_text(json.dumps({"responses": rows, "network_errors": dict(_NETWORK_ERRORS)}, indent=1))


@schemathesis.check
def x_request_id_present(ctx, response, case):
    """The API description promises an `x-request-id` header on every response."""
    if not _header(response, "x-request-id"):
        raise AssertionError(f"no x-request-id header on a {response.status_code} answer")


@schemathesis.check
class reaches_success:
    """Fail when an operation never answered 2xx during the run: then its success schema was
    never checked (a sign that the realistic-case hooks above stopped working). Also requires
    a streamed (text/event-stream) chat answer and a multipart detection answer."""

    # GET /v1/stream only answers 101 to a WebSocket handshake, which schemathesis does not make.
    EXEMPT = {"GET /v1/stream"}

    def __init__(self):
        self.tested, self.reached = set(), set()

    def after_response(self, ctx, response, case):
        label = case.operation.label
        self.tested.add(label)
        if 200 <= response.status_code < 300:
            self.reached.add(label)
            if label == "POST /v1/chat/completions" and _media(response) == "text/event-stream":
                self.reached.add("POST /v1/chat/completions (stream)")
            if label == "POST /v1/detections" and case.media_type == "multipart/form-data":
                self.reached.add("POST /v1/detections (multipart)")

    def after_run(self, ctx):
        wanted = (self.tested - self.EXEMPT) | {
            "POST /v1/chat/completions (stream)",
            "POST /v1/detections (multipart)",
        }
        missing = wanted - self.reached
        if missing:
            raise AssertionError("never answered 2xx: " + ", ".join(sorted(missing)))
