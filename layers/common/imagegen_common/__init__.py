"""What several Lambda functions of imagegen share, deployed as the CommonLayer.

The domain model (``models``), the errors (``errors``), settings, the AWS client factory
(``aws``), the Bedrock adapters (``bedrock``, ``png``) and the logic more than one function runs
(``jobs``, ``presign``, ``failures``). A module that only one function uses lives in that
function's folder next to its ``app.py`` (as ``functions/api/executions.py`` does), where Lambda
finds it on ``sys.path``.
"""
