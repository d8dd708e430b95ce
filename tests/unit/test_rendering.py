import pytest

from command_api.emails import rendering


def test_body_variables_are_html_escaped():
    body = rendering.render("<p>{{ name }}</p>", {"name": "<script>alert(1)</script>"}, html=True)
    assert body == "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>"


def test_subject_is_not_html_escaped():
    assert rendering.render("{{ a }} & co", {"a": "Tom & Jerry"}, html=False) == "Tom & Jerry & co"


def test_compile_error_is_reported():
    assert "Unclosed tag" in rendering.check_compiles("{% if x %}never closed", html=True)
    assert rendering.check_compiles("Hello {{ name }}", html=False) is None


@pytest.mark.parametrize("source", ["{% load static %}", "{% include 'x.html' %}"])
def test_templates_cannot_reach_files_or_tag_libraries(source):
    with pytest.raises(rendering.RenderError):
        rendering.render(source, {}, html=True)
