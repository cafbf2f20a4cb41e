"""The CF API of `celld --local` through a real third-party CC v3 client
(PyPI's cloudfoundry-client): login, reads, CRUD, jobs, and a token refresh
after the API refused a token. Run by tests/cf_api.rs as
`python cf_client.py ADDR PASSWORD`; any failed check raises."""

import sys

from cloudfoundry_client.client import CloudFoundryClient
from cloudfoundry_client.errors import InvalidStatusCode

addr, password = sys.argv[1], sys.argv[2]
client = CloudFoundryClient(f"http://{addr}")

# A wrong password is refused; the right one logs in.
try:
    client.init_with_user_credentials("admin", "not-the-password")
    raise AssertionError("a wrong password logged in")
except Exception as e:  # the oauth2 client raises its own error type
    assert "401" in str(e) or "nauthorized" in str(e), e
client.init_with_user_credentials("admin", password)

orgs = list(client.v3.organizations.list(names="local"))
assert [o["name"] for o in orgs] == ["local"], orgs
org = orgs[0]
dev = list(client.v3.spaces.list(names="dev", organization_guids=org["guid"]))
assert len(dev) == 1 and dev[0]["relationships"]["organization"]["data"]["guid"] == org["guid"], dev

space = client.v3.spaces.create("pyspace", org["guid"])
assert space["name"] == "pyspace"
assert client.v3.spaces.get(space["guid"])["name"] == "pyspace"

# An app: create, read, environment variables, env.
app = client.v3.apps._create({"name": "pyapp", "relationships": {"space": {"data": {"guid": space["guid"]}}}})
assert app["state"] == "STOPPED" and app["lifecycle"]["type"] == "buildpack", app
client.v3.apps._patch(f"{client.v3.apps.target_endpoint}/v3/apps/{app['guid']}/environment_variables", {"var": {"GREETING": "hi"}})
env = client.v3.apps.get_env(app["guid"])
assert env["environment_variables"] == {"GREETING": "hi"}, env
assert env["application_env_json"]["VCAP_APPLICATION"]["application_name"] == "pyapp", env
found = list(client.v3.apps.list(names="pyapp", space_guids=space["guid"]))
assert [a["guid"] for a in found] == [app["guid"]], found
processes = list(client.v3.processes.list(app_guids=app["guid"]))
assert [p["type"] for p in processes] == ["web"] and processes[0]["guid"] == app["guid"], processes

# A duplicate name is CC's 422.
try:
    client.v3.apps._create({"name": "pyapp", "relationships": {"space": {"data": {"guid": space["guid"]}}}})
    raise AssertionError("a duplicate app name was accepted")
except InvalidStatusCode as e:
    assert e.status_code == 422, e

# A user-provided service instance, bound and unbound.
ups = client.v3.service_instances._create({
    "name": "pydb", "type": "user-provided", "credentials": {"uri": "postgres://u:p@h/db"},
    "relationships": {"space": {"data": {"guid": space["guid"]}}},
})
assert ups["type"] == "user-provided"
binding = client.v3.service_credential_bindings._create({
    "type": "app",
    "relationships": {"app": {"data": {"guid": app["guid"]}}, "service_instance": {"data": {"guid": ups["guid"]}}},
})
bindings = list(client.v3.service_credential_bindings.list(app_guids=app["guid"]))
assert [b["guid"] for b in bindings] == [binding["guid"]], bindings
env = client.v3.apps.get_env(app["guid"])
assert env["system_env_json"]["VCAP_SERVICES"]["user-provided"][0]["credentials"]["uri"] == "postgres://u:p@h/db", env
client.v3.service_credential_bindings._remove(binding["guid"])
assert list(client.v3.service_credential_bindings.list(app_guids=app["guid"])) == []
client.v3.service_instances.remove(ups["guid"])

# A token the API refuses (code 1000) makes the client refresh and retry.
client._access_token = client._access_token[:-2] + "xx"
assert client.v3.apps.get(app["guid"])["name"] == "pyapp"

# Deletion is a job, polled to COMPLETE; the app is gone after it.
job = client.v3.apps.remove(app["guid"], asynchronous=False)
try:
    client.v3.apps.get(app["guid"])
    raise AssertionError("the app outlived its deletion")
except InvalidStatusCode as e:
    assert e.status_code == 404, e
client.v3.spaces.remove(space["guid"])
print("cf_client: all checks passed")
