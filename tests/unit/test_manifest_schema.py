import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.manifest import FamilyManifest, model_name, split_model_name

SCHEMA = Path(__file__).parents[2] / "docs" / "manifest.schema.json"


def test_documented_schema_is_current() -> None:
    assert json.loads(SCHEMA.read_text()) == FamilyManifest.model_json_schema()


def test_model_names() -> None:
    assert model_name("vision", "pruned-50-int8") == "vision__pruned-50-int8"
    assert split_model_name("vision__int8") == ("vision", "int8")
    assert split_model_name("vision") == ("vision", None)


def test_unknown_field_is_an_error() -> None:
    with pytest.raises(ValidationError, match="extra"):
        FamilyManifest.model_validate(
            {
                "family": "x",
                "task": "text-text",
                "metric": {"name": "bleu", "higher_is_better": True},
                "max_batch_size": 1,
                "inputs": [],
                "outputs": [],
                "assets": [],
                "built_at": "",
                "source": "",
                "variants": [],
                "varients": [],
            }
        )
