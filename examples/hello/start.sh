#!/bin/sh
# A small web app for the tiny stack (busybox only): a page that says which
# instance answered, served by busybox httpd on $PORT.
set -e
mkdir -p "$HOME/public"
cat > "$HOME/public/index.html" <<HTML
<!doctype html>
<title>hello from celld</title>
<h1>Hello from celld!</h1>
<p>App ${VCAP_APPLICATION:+$(echo "$VCAP_APPLICATION" | sed -n 's/.*"application_name":"\([^"]*\)".*/\1/p')}, instance ${CF_INSTANCE_INDEX:-?} (${CF_INSTANCE_GUID:-unknown}).</p>
HTML
echo "hello: serving instance ${CF_INSTANCE_INDEX:-?} on port $PORT"
exec busybox httpd -f -v -p "$PORT" -h "$HOME/public"
