"""The web app's form is built from the pipeline config models: each option renders from its
pydantic field, and an option the models lack is left out (so adding one is one line)."""

from __future__ import annotations


def test_form_inputs_follow_the_config_models():
    from splatforge.config import SceneConfig, TrainConfig
    from splatforge.service.routes_web import FORM_FIELDS, FormField, form_inputs

    inputs = {f"{i['stage']}.{i['name']}": i for i in form_inputs()}
    steps = inputs["train.max_steps"]
    assert steps["kind"] == "number" and steps["value_type"] == "number"
    assert steps["min"] == 1 and steps["help"] == TrainConfig.model_fields["max_steps"].description
    factor = inputs["scene.data_factor"]
    assert factor["kind"] == "select" and factor["options"] == [1, 2, 4, 8]
    # every listed field the models have is rendered, and only those
    models = {"train": TrainConfig, "scene": SceneConfig}
    for f in FORM_FIELDS:
        if f.stage in models:
            assert (f"{f.stage}.{f.name}" in inputs) == (f.name in models[f.stage].model_fields)
    extra = form_inputs((FormField("train", "no_such_option", "x"),
                         FormField("scene", "background", "Background")))
    assert [i["name"] for i in extra] == ["background"]
    assert form_inputs((FormField("train", "sh_degree", "SH"),))[0]["max"] == 3


def test_web_pages_need_no_key_but_the_api_does():
    from splatforge.service.routes_web import is_web_page

    for path in ("/", "/ui/", "/ui/jobs/" + "a" * 32, "/ui/scenes/" + "b" * 32,
                 "/ui/static/app.js"):
        assert is_web_page(path), path
    for path in ("/jobs", "/scenes", "/scenes/x/artifacts/point_cloud.ply", "/docs",
                 "/openapi.json", "/uix", "/ui/other"):
        assert not is_web_page(path), path
