"""The jobs table for tests that do not deploy the template: created from template.yaml's own
JobsTable definition (keys and indexes), so tests and deployments never disagree on its shape."""

from __future__ import annotations

from functools import cache
from typing import Any

import boto3

from tests.conftest import REPO_ROOT

JOBS_TABLE = "imagegen-jobs"


@cache
def _jobs_table_properties() -> dict[str, Any]:
    from samtranslator.yaml_helper import yaml_parse

    template = yaml_parse((REPO_ROOT / "template.yaml").read_text())
    properties: dict[str, Any] = template["Resources"]["JobsTable"]["Properties"]
    return properties


def create_jobs_table(name: str = JOBS_TABLE) -> str:
    """Create the table in whatever moto is open (its keys and GSIs as the template says)."""
    properties = _jobs_table_properties()
    boto3.client("dynamodb").create_table(
        TableName=name,
        BillingMode=properties["BillingMode"],
        AttributeDefinitions=properties["AttributeDefinitions"],
        KeySchema=properties["KeySchema"],
        GlobalSecondaryIndexes=properties["GlobalSecondaryIndexes"],
    )
    return name
