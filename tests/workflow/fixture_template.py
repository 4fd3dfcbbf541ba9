"""A small SAM template of our own (two functions, a state machine, a bus, a queue, an API) for the
deployer's tests, written with its code into a folder."""

from __future__ import annotations

import json
from pathlib import Path

FIXTURE_TEMPLATE = """\
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Parameters:
  Greeting:
    Type: String
    Default: Hello
Globals:
  Function:
    Runtime: python3.13
    Timeout: 30
    Environment:
      Variables:
        POWERTOOLS_SERVICE_NAME: fixture
        IMAGES_BUCKET: !Ref ImagesBucket
Resources:
  ImagesBucket:
    Type: AWS::S3::Bucket
  EventsBus:
    Type: AWS::Events::EventBus
    Properties:
      Name: !Sub "${AWS::StackName}-events"
  ResultQueue:
    Type: AWS::SQS::Queue
  ResultQueuePolicy:
    Type: AWS::SQS::QueuePolicy
    Properties:
      Queues: [!Ref ResultQueue]
      PolicyDocument:
        Statement:
          - Effect: Allow
            Principal: {Service: events.amazonaws.com}
            Action: sqs:SendMessage
            Resource: !GetAtt ResultQueue.Arn
  ResultRule:
    Type: AWS::Events::Rule
    Properties:
      EventBusName: !Ref EventsBus
      EventPattern:
        source: [fixture]
      Targets:
        - Arn: !GetAtt ResultQueue.Arn
          Id: results
  GreetFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: functions/greet
      Handler: app.lambda_handler
      MemorySize: 256
      Environment:
        Variables:
          GREETING: !Ref Greeting
          EVENT_BUS_NAME: !Ref EventsBus
  ApiFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: functions/api
      Handler: app.lambda_handler
      Environment:
        Variables:
          STATE_MACHINE_ARN: !Ref Machine
      Events:
        Post:
          Type: Api
          Properties: {Path: /hello, Method: post}
        Get:
          Type: Api
          Properties: {Path: "/hello/{name}", Method: get}
  Machine:
    Type: AWS::Serverless::StateMachine
    Properties:
      Type: STANDARD
      DefinitionUri: statemachine/machine.asl.json
      DefinitionSubstitutions:
        GreetFunctionArn: !GetAtt GreetFunction.Arn
        EventBusName: !Ref EventsBus
      Policies:
        - LambdaInvokePolicy: {FunctionName: !Ref GreetFunction}
Outputs:
  MachineArn:
    Value: !Ref Machine
"""

FIXTURE_ASL = {
    "StartAt": "Greet",
    "States": {
        "Greet": {
            "Type": "Task",
            "Resource": "arn:aws:states:::lambda:invoke",
            "Parameters": {"FunctionName": "${GreetFunctionArn}", "Payload.$": "$"},
            "OutputPath": "$.Payload",
            "Catch": [
                {"ErrorEquals": ["NameMissingError"], "ResultPath": "$.error", "Next": "No Name"}
            ],
            "Next": "Emit",
        },
        "Emit": {
            "Type": "Task",
            "Resource": "arn:aws:states:::events:putEvents",
            "Parameters": {
                "Entries": [
                    {
                        "EventBusName": "${EventBusName}",
                        "Source": "fixture",
                        "DetailType": "Greeted",
                        "Detail.$": "$",
                    }
                ]
            },
            "End": True,
        },
        "No Name": {"Type": "Fail", "Error": "NoName", "Cause": "caught NameMissingError"},
    },
}

GREET_APP = """\
import os

GREETING = os.environ["GREETING"]  # read at import time, as our settings are


class NameMissingError(Exception):
    pass


def lambda_handler(event, context):
    if not event.get("name"):
        raise NameMissingError("name is required")
    return {
        "message": f"{GREETING}, {event['name']}",
        "function_name": context.function_name,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "bus": os.environ["EVENT_BUS_NAME"],
    }
"""

API_APP = """\
import json


def lambda_handler(event, context):
    return {"statusCode": 200, "body": json.dumps({"path": event.get("path")})}
"""


def write_fixture(root: Path, template: str = FIXTURE_TEMPLATE) -> Path:
    (root / "functions" / "greet").mkdir(parents=True)
    (root / "functions" / "api").mkdir(parents=True)
    (root / "statemachine").mkdir()
    (root / "functions" / "greet" / "app.py").write_text(GREET_APP)
    (root / "functions" / "api" / "app.py").write_text(API_APP)
    (root / "statemachine" / "machine.asl.json").write_text(json.dumps(FIXTURE_ASL))
    path = root / "template.yaml"
    path.write_text(template)
    return path
