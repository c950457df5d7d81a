"""The locustfile of `iotgate loadtest` (also usable with `locust -f` directly; IOTGATE_HOME names the home).

    locust -f loadtests/locustfile.py --master --expect-workers 2 --iotgate-endpoint 127.0.0.1:8883 ...
    IOTGATE_HOME=/path/to/home locust -f loadtests/locustfile.py --worker --master-host MASTER
"""

from loadtests.users import AttackerUser, DeviceUser, IotgateShape

__all__ = ["AttackerUser", "DeviceUser", "IotgateShape"]
