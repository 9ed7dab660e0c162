"""The official `openai` Python package against `rtdetr serve`.

Detections from /v1/chat/completions (base64 data URLs and http URLs served from loopback)
must equal `rtdetr detect --json` for the same image.
"""

import base64
import json
import urllib.error
import urllib.request

import openai
import pytest

from conftest import IMAGES_DIR, SECOND_MODEL_DIR, cli_detections

IMAGES = ["photo.png", "photo_exif.jpg", "gray.png", "rgba.png"]
THRESHOLD = 0.3


def data_url(name):
    mime = "image/jpeg" if name.endswith(".jpg") else "image/png"
    return f"data:{mime};base64," + base64.b64encode((IMAGES_DIR / name).read_bytes()).decode()


def client_for(server, key=None):
    url, good_key, _ = server
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key or good_key, max_retries=0, timeout=60)


def ask(client, model, urls, **extra):
    content = [{"type": "text", "text": "Which objects are in the image?"}]
    content += [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": content}],
        extra_body={"threshold": THRESHOLD, **extra},
    )


def assert_same(name, got, want):
    assert (got["width"], got["height"]) == (want["width"], want["height"]), name
    assert len(got["detections"]) == len(want["detections"]), name
    for g, w in zip(got["detections"], want["detections"]):
        assert (g["label"], g["class_id"]) == (w["label"], w["class_id"]), name
        assert abs(g["score"] - w["score"]) <= 1e-5, name
        for k in ("xmin", "ymin", "xmax", "ymax"):
            assert abs(g["box"][k] - w["box"][k]) <= 1e-3, (name, k)


@pytest.mark.parametrize("name", IMAGES)
def test_base64_image_matches_cli(server, name):
    _, _, model = server
    resp = ask(client_for(server), model, [data_url(name)])
    assert resp.object == "chat.completion"
    assert resp.model == model
    choice = resp.choices[0]
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    results = json.loads(choice.message.content)["results"]
    assert len(results) == 1
    want = cli_detections(name, THRESHOLD)
    assert want["detections"], "pick a threshold that yields detections"
    assert_same(name, results[0], want)
    assert resp.usage.prompt_tokens == 1
    assert resp.usage.completion_tokens == len(want["detections"])


@pytest.mark.parametrize("name", ["photo.png", "photo_exif.jpg"])
def test_url_image_matches_cli(server, image_server, name):
    _, _, model = server
    resp = ask(client_for(server), model, [f"{image_server}/{name}"])
    results = json.loads(resp.choices[0].message.content)["results"]
    assert_same(name, results[0], cli_detections(name, THRESHOLD))


def test_several_images_in_order(server, image_server):
    _, _, model = server
    urls = [data_url("gray.png"), f"{image_server}/rgba.png", data_url("photo.png")]
    resp = ask(client_for(server), model, urls)
    results = json.loads(resp.choices[0].message.content)["results"]
    for name, got in zip(["gray.png", "rgba.png", "photo.png"], results):
        assert_same(name, got, cli_detections(name, THRESHOLD))
    assert len(results) == 3


def test_streaming_equals_non_streaming(server):
    _, _, model = server
    client = client_for(server)
    full = ask(client, model, [data_url("photo.png")]).choices[0].message.content
    content = [{"type": "image_url", "image_url": {"url": data_url("photo.png")}}]
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": content}],
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"threshold": THRESHOLD},
    )
    parts, finish, usage = [], None, None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                parts.append(c.delta.content)
            finish = c.finish_reason or finish
    assert json.loads("".join(parts)) == json.loads(full)
    assert finish == "stop"
    assert usage is not None and usage.prompt_tokens == 1


def test_models_and_errors(server):
    url, _, model = server
    client = client_for(server)
    assert [m.id for m in client.models.list()] == [model, SECOND_MODEL_DIR.name]
    with pytest.raises(openai.NotFoundError) as e:
        ask(client, "gpt-4o", [data_url("gray.png")])
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        ask(client_for(server, key="wrong-key"), model, [data_url("gray.png")])
    with pytest.raises(openai.UnprocessableEntityError) as e:
        ask(client, model, [data_url("gray.png")], threshold=3)
    assert e.value.param == "threshold"
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, model, ["data:image/png;base64,@@@"])
    assert e.value.code == "invalid_base64"


@pytest.mark.parametrize("name", ["photo.png", "rgba.png"])
def test_two_models_in_one_server(server, name):
    """Each request runs on the model it names; the answers equal the CLI's for that model."""
    _, _, first = server
    client = client_for(server)
    answers = {}
    for model, model_dir in [(first, None), (SECOND_MODEL_DIR.name, SECOND_MODEL_DIR)]:
        resp = ask(client, model, [data_url(name)])
        assert resp.model == model
        got = json.loads(resp.choices[0].message.content)["results"][0]
        want = cli_detections(name, THRESHOLD, model_dir) if model_dir else cli_detections(name, THRESHOLD)
        assert_same(f"{model} {name}", got, want)
        answers[model] = got["detections"]
    assert answers[first] != answers[SECOND_MODEL_DIR.name], "the two models answered alike"


def test_native_detections_endpoint(server):
    url, key, model = server
    body = json.dumps({"image": data_url("photo_exif.jpg"), "threshold": THRESHOLD}).encode()
    req = urllib.request.Request(
        f"{url}/v1/detections",
        data=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.headers["x-request-id"]
        got = json.load(r)
    assert got["model"] == model
    assert_same("photo_exif.jpg", got, cli_detections("photo_exif.jpg", THRESHOLD))
    req = urllib.request.Request(f"{url}/v1/detections", data=body, headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=60)
    assert e.value.code == 401
    assert json.load(e.value)["error"]["code"] == "invalid_api_key"
