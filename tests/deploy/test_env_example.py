"""`.env.example` lists every setting and is safe to copy: honcho loads `.env` into every process
bin/run starts, so a copy of the example must change nothing until a line is uncommented."""

import re

from honcho.environ import parse

from tests.deploy.test_manifests import ROOT, env_names_read_by_the_code

EXAMPLE = (ROOT / ".env.example").read_text()


def test_a_copy_of_the_example_as_dotenv_sets_nothing():
    assert parse(EXAMPLE) == {}


def test_the_example_lists_every_setting_the_code_reads():
    listed = set(re.findall(r"^# ([A-Z][A-Z0-9_]+)=", EXAMPLE, re.M))
    missing = env_names_read_by_the_code() - listed
    assert not missing, f"settings missing from .env.example: {sorted(missing)}"
