#!/usr/bin/env bats
# shellcheck disable=SC2016 # the inner shells' scripts are single-quoted on purpose: they expand there
# shellcheck disable=SC2030,SC2031 # each @test runs in a subshell of its own; its exports are its own
# The plugin's hooks run as the Buildkite agent runs them, against a real call-me server.
#
# tests/test_buildkite.py starts the server and runs each test here alone (bats --filter) with
# CALL_ME_URL, CALL_ME_API_KEY (a client key) and CALL_ME_TEST_ADMIN_KEY set; `call-me` is on PATH.
#
# As the agent does (its "scriptwrapper"): each hook is sourced by a bash of its own, in the job's
# environment plus the plugin's properties as BUILDKITE_PLUGIN_CALL_ME_*, and what it exports is
# carried on to the command and the later hooks (here through $JOB_ENV, `export -p` lines).
# pre-exit runs whatever became of the command.

setup() {
    : "${CALL_ME_URL:?run by tests/test_buildkite.py, which starts a server}"
    : "${CALL_ME_API_KEY:?}" "${CALL_ME_TEST_ADMIN_KEY:?}"
    PLUGIN=$(cd "$BATS_TEST_DIRNAME/.." && pwd)
    export BUILDKITE=true CI=true
    export BUILDKITE_JOB_ID="0190-job-$BATS_TEST_NUMBER"
    export BUILDKITE_BUILD_PATH="$BATS_TEST_TMPDIR/builds"
    export BUILDKITE_ORGANIZATION_SLUG=acme BUILDKITE_PIPELINE_SLUG=shop BUILDKITE_BUILD_NUMBER=41
    export BUILDKITE_LABEL=deploy BUILDKITE_COMMIT=0123abc BUILDKITE_TIMEOUT=10
    export BUILDKITE_BUILD_URL=https://buildkite.com/acme/shop/builds/41
    export BUILDKITE_PLUGIN_NAME=CALL_ME
    export BUILDKITE_PLUGIN_CALL_ME_ENVIRONMENT=uat
    STATE="$BUILDKITE_BUILD_PATH/call-me/$BUILDKITE_JOB_ID"
    JOB_ENV="$BATS_TEST_TMPDIR/job.env"
    LOG="$BATS_TEST_TMPDIR/job.log"
    REAL_PATH=$PATH
    : >"$LOG"
}

# The job's environment as the first hook sees it: the test's own, with PATH=$JOB_PATH if set.
start_job() {
    (
        if [ -n "${JOB_PATH:-}" ]; then PATH=$JOB_PATH; fi
        export -p
    ) >"$JOB_ENV"
}

# hook NAME: hooks/NAME sourced by a bash of its own; its exports carry on in $JOB_ENV. Its output
# goes to $LOG (and to bats' output on failure); returns its exit status.
hook() {
    [ -f "$JOB_ENV" ] || start_job
    echo "~~~ hook $1" >>"$LOG"
    "$BASH" -c '. "$1"; __job_env_out=$1.next; trap '\''export -p >"$__job_env_out"'\'' EXIT; . "$2"' \
        hook "$JOB_ENV" "$PLUGIN/hooks/$1" >>"$LOG" 2>&1
    local status=$?
    if [ -f "$JOB_ENV.next" ]; then mv -f "$JOB_ENV.next" "$JOB_ENV"; fi
    return "$status"
}

# command TEXT: the step's command, in the environment the hooks left; returns its exit status.
command_step() {
    echo "~~~ command" >>"$LOG"
    "$BASH" -c '. "$1"; eval "$2"' command "$JOB_ENV" "$1" >>"$LOG" 2>&1
}

# What the command printed about the lease: the token must not be among what it sees.
SHOW='echo "seen: env=$CALL_ME_ENVIRONMENT fence=$CALL_ME_FENCE lease=$CALL_ME_LEASE_ID url=$CALL_ME_PROPERTY_URL db=$CALL_ME_PROPERTY_DB_HOST token=${CALL_ME_LEASE_TOKEN:-none}"'

api() { # METHOD PATH [curl args...]: with the admin key, the answer's body
    local method=$1 path=$2
    shift 2
    PATH=$REAL_PATH curl -sS -X "$method" -H "X-API-KEY: $CALL_ME_TEST_ADMIN_KEY" "$@" "$CALL_ME_URL$path"
}

json() { # EXPRESSION on the JSON of stdin, as `it`
    PATH=$REAL_PATH python3 -c 'import json, sys; it = json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"
}

kinds() { # ENV: the kinds of its history, oldest first, without environment_changed
    api GET "/v1/history?environment=$1&limit=100" |
        json '" ".join(e["kind"] for e in reversed(it["events"]) if e["kind"] != "environment_changed")'
}

queued() { # ENV: how many wait for it
    api GET "/v1/environments/$1" | json 'len(it["queue"])'
}

hold_elsewhere() { # ENV: someone else's lease on it, for 120 s
    PATH=$REAL_PATH curl -sS -o /dev/null -H "X-API-KEY: $CALL_ME_API_KEY" -X POST "$CALL_ME_URL/v1/leases" \
        -d "{\"environment\": \"$1\", \"holder\": \"someone else\", \"ttl\": 120}"
}

token() { # the lease token, from the file pre-command keeps for pre-exit
    sed -n "s/^CALL_ME_LEASE_TOKEN='\(.*\)'\$/\1/p" "$STATE/lease"
}

fail_with_log() {
    echo "$*" >&2
    cat "$LOG" >&2
    return 1
}

# Neither the key nor the token in anything the job printed, nor in what the command saw; the
# state folder (it holds the token) gone after pre-exit.
assert_secret_free() { # TOKEN
    [ -n "$1" ] || fail_with_log "no token to look for"
    ! grep -qF -- "$CALL_ME_API_KEY" "$LOG" || fail_with_log "the API key was printed"
    ! grep -qF -- "$1" "$LOG" || fail_with_log "the lease token was printed"
    ! grep -qF -- "$1" "$JOB_ENV" || fail_with_log "the lease token reached the command's environment"
    [ ! -e "$STATE" ] || fail_with_log "$STATE is still there"
}

curl_only_path() { # a PATH with bash, curl and the few tools the hooks use: no Python, no call-me
    local bin="$BATS_TEST_TMPDIR/bin" tool
    mkdir -p "$bin"
    for tool in sh bash curl cat date mkdir mv od rm sleep tr chmod; do
        ln -sf "$(PATH=$REAL_PATH command -v "$tool")" "$bin/$tool"
    done
    echo "$bin"
}

@test "pass: the command holds the environment with its variables, pre-exit releases it (cli)" {
    api PUT /v1/environments/uat -d '{"properties": {"url": "https://uat.example.com", "db-host": "db'\''1"}}' >/dev/null
    hook pre-command || fail_with_log "pre-command failed"
    grep -q "(with cli)" "$LOG" || fail_with_log "auto did not take the CLI on PATH"
    # The default TTL: the step's timeout_in_minutes (BUILDKITE_TIMEOUT=10) in seconds, plus 10 minutes.
    grep -q "acquiring environment uat for 1200 s" "$LOG" || fail_with_log "not the default TTL"
    local token
    token=$(token)
    command_step "$SHOW" || fail_with_log "the command failed"
    grep -qE "^seen: env=uat fence=[0-9]+ lease=l_[^ ]+ url=https://uat.example.com db=db'1 token=none\$" "$LOG" ||
        fail_with_log "the command did not see the lease"
    hook pre-exit || fail_with_log "pre-exit failed"
    grep -q "^call-me: released uat (lease l_" "$LOG" || fail_with_log "no release line"
    [ "$(kinds uat)" = "acquired released" ] || fail_with_log "history: $(kinds uat)"
    local holder
    holder=$(api GET "/v1/history?environment=uat&limit=100" | json '[e["holder"] for e in it["events"] if e["kind"] == "acquired"][0]')
    [ "$holder" = "acme/shop#41 deploy" ] || fail_with_log "holder: $holder"
    assert_secret_free "$token"
}

@test "pass without Python: the curl path, by label" {
    api PUT /v1/environments/pool-1 -d '{"labels": ["pool"], "properties": {"url": "https://pool-1.example.com"}}' >/dev/null
    unset BUILDKITE_PLUGIN_CALL_ME_ENVIRONMENT
    export BUILDKITE_PLUGIN_CALL_ME_LABEL=pool BUILDKITE_PLUGIN_CALL_ME_TTL=300
    export BUILDKITE_PLUGIN_CALL_ME_HOLDER="release train #7"
    JOB_PATH=$(curl_only_path)
    hook pre-command || fail_with_log "pre-command failed"
    grep -q "acquiring an environment labelled pool for 300 s from .* (with curl)" "$LOG" || fail_with_log "not the curl path"
    local token
    token=$(token)
    command_step 'if command -v python3 || command -v call-me; then exit 9; fi; '"$SHOW" || fail_with_log "the command failed"
    grep -qE "^seen: env=pool-1 fence=[0-9]+ lease=l_[^ ]+ url=https://pool-1.example.com db= token=none\$" "$LOG" ||
        fail_with_log "the command did not see the lease"
    hook pre-exit || fail_with_log "pre-exit failed"
    grep -q "^call-me: released pool-1 (lease l_" "$LOG" || fail_with_log "no release line"
    [ "$(kinds pool-1)" = "acquired released" ] || fail_with_log "history: $(kinds pool-1)"
    local holder
    holder=$(api GET "/v1/history?environment=pool-1&limit=100" | json '[e["holder"] for e in it["events"] if e["kind"] == "acquired"][0]')
    [ "$holder" = "release train #7" ] || fail_with_log "holder: $holder"
    assert_secret_free "$token"
}

@test "fail: a failing command keeps its exit code and pre-exit still releases (curl and cli)" {
    local client token status
    for client in curl cli; do
        export BUILDKITE_PLUGIN_CALL_ME_CLIENT=$client BUILDKITE_JOB_ID="0190-fail-$client"
        STATE="$BUILDKITE_BUILD_PATH/call-me/$BUILDKITE_JOB_ID"
        rm -f "$JOB_ENV"
        hook pre-command || fail_with_log "pre-command failed ($client)"
        token=$(token)
        status=0
        command_step "$SHOW; exit 3" || status=$?
        [ "$status" = 3 ] || fail_with_log "the command's exit status became $status ($client)"
        hook pre-exit || fail_with_log "pre-exit failed ($client)"
        assert_secret_free "$token"
    done
    [ "$(kinds uat)" = "acquired released acquired released" ] || fail_with_log "history: $(kinds uat)"
}

@test "cancel: pre-exit releases after the command is stopped with SIGTERM" {
    hook pre-command || fail_with_log "pre-command failed"
    local token pid
    token=$(token)
    # As the agent cancels a job: SIGTERM to the command's process group, then the pre-exit hooks.
    setsid "$BASH" -c '. "$1"; echo started >"$2"; exec sleep 300' command "$JOB_ENV" "$BATS_TEST_TMPDIR/started" &
    pid=$!
    while [ ! -f "$BATS_TEST_TMPDIR/started" ]; do sleep 0.05; done
    [ "$(kinds uat)" = "acquired" ] || fail_with_log "history while running: $(kinds uat)"
    kill -TERM -- "-$pid"
    wait "$pid" || true
    hook pre-exit || fail_with_log "pre-exit failed"
    grep -q "^call-me: released uat (lease l_" "$LOG" || fail_with_log "no release line"
    [ "$(kinds uat)" = "acquired released" ] || fail_with_log "history: $(kinds uat)"
    assert_secret_free "$token"
}

@test "cancel while waiting in the queue: the place is left (curl and cli)" {
    hold_elsewhere uat
    local client pid status
    for client in curl cli; do
        export BUILDKITE_PLUGIN_CALL_ME_CLIENT=$client BUILDKITE_JOB_ID="0190-cancel-$client"
        STATE="$BUILDKITE_BUILD_PATH/call-me/$BUILDKITE_JOB_ID"
        start_job
        # As the agent cancels a job in pre-command: SIGTERM to the hook's process group.
        setsid "$BASH" -c '. "$1"; . "$2"' hook "$JOB_ENV" "$PLUGIN/hooks/pre-command" >>"$LOG" 2>&1 &
        pid=$!
        until [ "$(queued uat)" = 1 ]; do sleep 0.05; done
        sleep 0.5 # inside its long-poll now
        kill -TERM -- "-$pid"
        status=0
        wait "$pid" || status=$?
        [ "$status" != 0 ] || fail_with_log "pre-command succeeded ($client)"
        hook pre-exit || fail_with_log "pre-exit failed ($client)"
        [ "$(queued uat)" = 0 ] || fail_with_log "still queued ($client)"
        [ ! -e "$STATE" ] || fail_with_log "$STATE is still there ($client)"
    done
    [ "$(kinds uat)" = "acquired queued left queued left" ] || fail_with_log "history: $(kinds uat)"
}

@test "timeout: waiting longer than timeout fails clearly, runs no command and leaves no ticket (curl and cli)" {
    hold_elsewhere uat
    export BUILDKITE_PLUGIN_CALL_ME_TIMEOUT=2
    local client status
    for client in curl cli; do
        export BUILDKITE_PLUGIN_CALL_ME_CLIENT=$client BUILDKITE_JOB_ID="0190-timeout-$client"
        STATE="$BUILDKITE_BUILD_PATH/call-me/$BUILDKITE_JOB_ID"
        rm -f "$JOB_ENV"
        status=0
        hook pre-command || status=$?
        [ "$status" = 4 ] || fail_with_log "pre-command exited with $status, not 4 ($client)"
        hook pre-exit || fail_with_log "pre-exit failed ($client)"
        [ "$(queued uat)" = 0 ] || fail_with_log "still queued ($client)"
    done
    grep -qF "gave up waiting for environment uat after 2s (timeout) and left the queue; raise timeout" "$LOG" ||
        fail_with_log "no clear message from the curl path"
    grep -qF "could not acquire environment uat (call-me exited with 4)" "$LOG" || fail_with_log "no clear message from the cli path"
    [ "$(grep -c "no lease to release (the pre-command hook did not acquire one)" "$LOG")" = 2 ] || fail_with_log "pre-exit"
    [ "$(kinds uat)" = "acquired queued left queued left" ] || fail_with_log "history: $(kinds uat)"
}

@test "no target: pre-command fails and names the plugin's properties" {
    unset BUILDKITE_PLUGIN_CALL_ME_ENVIRONMENT
    local status=0
    hook pre-command || status=$?
    [ "$status" = 2 ] || fail_with_log "pre-command exited with $status, not 2"
    grep -qF "neither environment nor label is set; give the call-me plugin one of them" "$LOG" || fail_with_log "message"
    hook pre-exit || fail_with_log "pre-exit failed"
}

@test "client cli without call-me: pre-command fails and says how to get it, never from a public index" {
    export BUILDKITE_PLUGIN_CALL_ME_CLIENT=cli
    JOB_PATH=$(curl_only_path)
    local status=0
    hook pre-command || status=$?
    [ "$status" = 2 ] || fail_with_log "pre-command exited with $status, not 2"
    grep -qF "client=cli, but there is no call-me on PATH; use an image with it (pip install git+https://github.com/call-me/call-me@v1), or client=curl" "$LOG" ||
        fail_with_log "message"
    ! grep -qF "pip install call-me" "$LOG" || fail_with_log "the name call-me is nobody's on PyPI"
    hook pre-exit || fail_with_log "pre-exit failed"
    [ "$(kinds uat)" = "" ] || fail_with_log "history: $(kinds uat)"
}
