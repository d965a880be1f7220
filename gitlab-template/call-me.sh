# call-me for GitLab CI: `acquire` (before_script) and `release` (after_script) one lease.
#
# The one source of the shell logic of the `.call-me` job: scripts/gitlab-generate inlines this
# file into gitlab-template/call-me.gitlab-ci.yml and templates/call-me.yml, and into the
# Buildkite plugin's hooks (call-me-buildkite-plugin/hooks/pre-command and pre-exit; edit it
# here, then run that script; tests/test_gitlab.py fails while they differ). The YAML runs it as
#     ( set -- acquire; <this file> ) || exit $?
# in a subshell, so nothing here (functions, traps, shell options) leaks into the job's script.
#
# POSIX sh. Two paths, CALL_ME_CLIENT=auto|cli|curl: the `call-me` CLI when it is on PATH, else
# curl alone with API.md's `Accept: text/plain` answers (no Python, no jq; besides curl only
# cat, chmod, date, mkdir, mv, od, rm, sleep, tr). The lease travels from before_script to
# after_script (its own shell) in a private folder of the build directory, CALL_ME_STATE_DIR.
# The API key and the lease token never reach a command line, a log line or the job's
# environment: curl reads them from header files in that folder.
#
# Exit codes as the CLI's: 2 bad settings or input refused, 4 CALL_ME_TIMEOUT passed (the
# queue was left), 5 server unreachable or answering 502/503/504, 6 key refused, 7 not found,
# 1 anything else.

set +x # a trace (CI_DEBUG_TRACE) would print the token
set +e # every failure is handled below, with its own message
umask 077

_cm_nl='
'
_cm_state=${CALL_ME_STATE_DIR:-${CI_PROJECT_DIR:-.}/.call-me/${CI_JOB_ID:-local}}
_cm_retry_for=${CALL_ME_RETRY_FOR:-60}

# The words of the messages that name a setting or a step: GitLab's, unless the file that inlines
# this one said otherwise before it (_cm_ci=buildkite: the Buildkite plugin's hooks, whose lines
# before this file also give the CI_* names below their Buildkite values), or _cm_ci=generic is in
# the environment of `sh call-me.sh acquire|release` run as a file of its own (docs/ci/).
case ${_cm_ci:-gitlab} in
generic)
    _cm_n_env=CALL_ME_ENVIRONMENT _cm_n_label=CALL_ME_LABEL _cm_n_ttl=CALL_ME_TTL _cm_n_timeout=CALL_ME_TIMEOUT
    _cm_n_envs=CALL_ME_ENVIRONMENTS _cm_n_client=CALL_ME_CLIENT _cm_acquirer="call-me.sh acquire" _cm_releaser="call-me.sh release"
    _cm_set_target="set one in the step's environment"
    _cm_set_url="set it in the step's environment, e.g. https://call-me.example.com"
    _cm_set_key="give it to the step from the CI system's secrets, never in the pipeline's file"
    ;;
buildkite)
    _cm_n_env=environment _cm_n_label=label _cm_n_ttl=ttl _cm_n_timeout=timeout _cm_n_client=client
    _cm_n_envs= # the plugin takes one target; several at once are for the CLI (`call-me run --and`)
    _cm_acquirer='the pre-command hook' _cm_releaser='the pre-exit hook'
    _cm_set_target="give the call-me plugin one of them in the step's plugins"
    _cm_set_url="export it in the job's environment (an agent environment hook or a Buildkite secret), never in pipeline.yml"
    _cm_set_key="export it in the job's environment from a Buildkite secret, never in pipeline.yml"
    ;;
*)
    _cm_n_env=CALL_ME_ENVIRONMENT _cm_n_label=CALL_ME_LABEL _cm_n_ttl=CALL_ME_TTL _cm_n_timeout=CALL_ME_TIMEOUT
    _cm_n_envs=CALL_ME_ENVIRONMENTS _cm_n_client=CALL_ME_CLIENT _cm_acquirer=before_script _cm_releaser=after_script
    _cm_set_target="set one in the job's variables"
    _cm_set_url="set it as a CI/CD variable (Settings > CI/CD > Variables), e.g. https://call-me.example.com"
    _cm_set_key="add it as a masked CI/CD variable (Settings > CI/CD > Variables, Masked)"
    ;;
esac

_cm_say() { printf 'call-me: %s\n' "$*" >&2; }
_cm_die() { # CODE MESSAGE
    _cm_code=$1
    shift
    _cm_say "$*"
    exit "$_cm_code"
}
_cm_now() { date +%s; }

_cm_replace() { # TEXT FROM TO: every FROM in TEXT replaced, into _cm_out
    _cm_in=$1
    _cm_out=
    while :; do
        case $_cm_in in
        *"$2"*)
            _cm_out=$_cm_out${_cm_in%%"$2"*}$3
            _cm_in=${_cm_in#*"$2"}
            ;;
        *)
            _cm_out=$_cm_out$_cm_in
            return 0
            ;;
        esac
    done
}

_cm_quote() { # VALUE: single-quoted for sh, into _cm_out
    _cm_replace "$1" "'" "'\\''"
    _cm_out="'$_cm_out'"
}

_cm_json() { # VALUE: a JSON string, into _cm_out
    _cm_replace "$1" "\\" "\\\\"
    _cm_replace "$_cm_out" '"' '\"'
    _cm_replace "$_cm_out" "$_cm_nl" '\n'
    _cm_replace "$_cm_out" "$(printf '\t')" '\t'
    _cm_replace "$_cm_out" "$(printf '\r')" '\r'
    _cm_out="\"$_cm_out\""
}

# Reads KEY='value' lines (API.md's text/plain answers, the CLI's --output env, our own lease
# file) without eval-ing the text: each value is taken apart here ('\'' is a quote inside), and
# only names of the list below are set. The one eval sees a checked name and a literal
# `$_cm_val`, never the server's text. _cm_props lists the CALL_ME_PROPERTY_* names seen (and, for
# several environments at once, every CALL_ME_<ENV>_* name but the tokens).
_cm_parse() { # TEXT; returns 1 on anything that is not such lines
    _cm_rest=$1
    _cm_props=
    while [ -n "$_cm_rest" ]; do
        case $_cm_rest in
        "$_cm_nl"*)
            _cm_rest=${_cm_rest#"$_cm_nl"}
            continue
            ;;
        esac
        _cm_key=${_cm_rest%%=*}
        case $_cm_key in
        '' | [!A-Z]* | *[!A-Z0-9_]*) return 1 ;;
        esac
        _cm_rest=${_cm_rest#*=}
        case $_cm_rest in
        "'"*) _cm_rest=${_cm_rest#?} ;;
        *) return 1 ;;
        esac
        _cm_val=
        while :; do
            case $_cm_rest in
            *"'"*) ;;
            *) return 1 ;;
            esac
            _cm_val=$_cm_val${_cm_rest%%"'"*}
            _cm_rest=${_cm_rest#*"'"}
            case $_cm_rest in
            "\\''"*)
                _cm_val="$_cm_val'"
                _cm_rest=${_cm_rest#???}
                ;;
            *) break ;;
            esac
        done
        case $_cm_rest in
        '') ;;
        "$_cm_nl"*) _cm_rest=${_cm_rest#"$_cm_nl"} ;;
        *) return 1 ;;
        esac
        case $_cm_key in
        CALL_ME_LEASE_ID | CALL_ME_LEASE_TOKEN | CALL_ME_ENVIRONMENT | CALL_ME_FENCE | CALL_ME_EXPIRES_AT) ;;
        CALL_ME_TICKET | CALL_ME_POSITION | CALL_ME_ACQUIRED_BY | CALL_ME_ACQUIRED_AT) ;;
        CALL_ME_GROUP_ID | CALL_ME_GROUP_TOKEN | CALL_ME_ENVIRONMENTS) ;;
        CALL_ME_?*_LEASE_TOKEN) [ -n "${_cm_group:-}" ] || _cm_props="$_cm_props $_cm_key" ;; # never exported
        CALL_ME_PROPERTY_?*) _cm_props="$_cm_props $_cm_key" ;;
        CALL_ME_?*_LEASE_ID | CALL_ME_?*_ENVIRONMENT | CALL_ME_?*_FENCE | CALL_ME_?*_EXPIRES_AT | CALL_ME_?*_PROPERTY_?*)
            [ -n "${_cm_group:-}" ] || continue # a group's part, prefixed by its environment's name
            _cm_props="$_cm_props $_cm_key"
            ;;
        *) continue ;; # a newer server may say more
        esac
        eval "$_cm_key=\$_cm_val"
    done
}

_cm_write() { # FILE NAME...: NAME='value' lines of those variables, replacing FILE at once
    _cm_file=$1
    shift
    : >"$_cm_file.new" || return 1
    for _cm_name in "$@"; do
        eval "_cm_quote \"\${$_cm_name:-}\""
        printf '%s=%s\n' "$_cm_name" "$_cm_out" >>"$_cm_file.new" || return 1
    done
    mv -f "$_cm_file.new" "$_cm_file"
}

_cm_settings() {
    CALL_ME_URL=${CALL_ME_URL:-}
    [ -n "$CALL_ME_URL" ] || _cm_die 2 "CALL_ME_URL is not set, so the job cannot reach the call-me server;" \
        "$_cm_set_url"
    case $CALL_ME_URL in
    http://* | https://*) ;;
    *) CALL_ME_URL=http://$CALL_ME_URL ;; # host:port, as the original's HOST
    esac
    CALL_ME_URL=${CALL_ME_URL%/}
    [ -n "${CALL_ME_API_KEY:-}" ] || _cm_die 2 "CALL_ME_API_KEY is not set, so the server would refuse the job;" \
        "$_cm_set_key"
    case $_cm_retry_for in '' | *[!0-9]*) _cm_die 2 "CALL_ME_RETRY_FOR='$_cm_retry_for' is not a whole number of seconds" ;; esac
    _cm_client=${CALL_ME_CLIENT:-auto}
    case $_cm_client in
    auto) if command -v call-me >/dev/null 2>&1; then _cm_client=cli; else _cm_client=curl; fi ;;
    cli) command -v call-me >/dev/null 2>&1 || _cm_die 2 "$_cm_n_client=cli, but there is no call-me on PATH;" \
        "use an image with it (pip install git+https://github.com/call-me/call-me@v1), or $_cm_n_client=curl" ;;
    curl) ;;
    *) _cm_die 2 "$_cm_n_client='$_cm_client' is not one of auto, cli, curl" ;;
    esac
    if [ "$_cm_client" = curl ] && ! command -v curl >/dev/null 2>&1; then
        _cm_die 2 "neither call-me nor curl is on PATH in this job's image; install one of them"
    fi
    mkdir -p "$_cm_state" || _cm_die 1 "cannot make $_cm_state for the lease; is the build directory writable?"
    chmod 700 "$_cm_state"
    # The key is given to curl in a file, never on its command line (visible to `ps`).
    printf 'X-API-KEY: %s\n' "$CALL_ME_API_KEY" >"$_cm_state/key-header" || _cm_die 1 "cannot write in $_cm_state"
}

# One HTTP exchange: METHOD PATH MAX_SECONDS [curl options...]. Sets _cm_status (000 when no
# answer), _cm_body and _cm_error (curl's message).
_cm_curl() {
    _cm_method=$1 _cm_path=$2 _cm_max=$3
    shift 3
    rm -f "$_cm_state/response"
    _cm_status=$(curl -sS -X "$_cm_method" --max-time "$_cm_max" --connect-timeout 10 \
        -H @"$_cm_state/key-header" -H 'Accept: text/plain' \
        -o "$_cm_state/response" -w '%{http_code}' "$@" "$CALL_ME_URL$_cm_path" 2>"$_cm_state/curl-error")
    [ -n "$_cm_status" ] || _cm_status=000
    _cm_body=$(cat "$_cm_state/response" 2>/dev/null)
    _cm_error=$(cat "$_cm_state/curl-error" 2>/dev/null)
    rm -f "$_cm_state/response" "$_cm_state/curl-error"
}

# _cm_curl, again while the server cannot be reached or answers 502/503/504 (a restart, a proxy),
# with backoff (1, 2, 4 ... 16 s), until the epoch second _cm_until. Returns 1 when it gave up.
# Any other answer, a 4xx included, goes back to the caller at once.
_cm_call() {
    _cm_delay=1
    while :; do
        _cm_curl "$@"
        case $_cm_status in
        000) _cm_why=${_cm_error:-no answer} ;;
        502 | 503 | 504) _cm_why="HTTP $_cm_status" ;;
        *) return 0 ;;
        esac
        if [ $(($(_cm_now) + _cm_delay)) -gt "$_cm_until" ]; then
            _cm_say "giving up on $CALL_ME_URL: $_cm_why"
            return 1
        fi
        _cm_say "$CALL_ME_URL did not answer ($_cm_why); retrying in ${_cm_delay}s"
        sleep "$_cm_delay"
        _cm_delay=$((_cm_delay * 2))
        [ "$_cm_delay" -le 16 ] || _cm_delay=16
    done
}

_cm_refused() { # WHAT: the server's answer was an error it decided; exit with the CLI's code
    case $_cm_status in
    401 | 403) _cm_code=6 ;;
    404 | 410) _cm_code=7 ;;
    400 | 413 | 422) _cm_code=2 ;;
    *) _cm_code=1 ;;
    esac
    # A problem document (API.md) says it in its "detail" and "code": those, not the JSON; anything else (a
    # proxy's page) as it came.
    _cm_detail='' _cm_slug=''
    case $_cm_body in *'"detail":"'*) _cm_detail=${_cm_body#*'"detail":"'} _cm_detail=${_cm_detail%%'"'*} ;; esac
    case $_cm_body in *'"code":"'*) _cm_slug=${_cm_body#*'"code":"'} _cm_slug=${_cm_slug%%'"'*} ;; esac
    if [ -n "$_cm_detail" ]; then
        _cm_die "$_cm_code" "$1: the server answered HTTP $_cm_status ${_cm_slug:-error}: $_cm_detail"
    fi
    _cm_die "$_cm_code" "$1: the server answered HTTP $_cm_status: $_cm_body"
}

_cm_leave() { # leave the queue (also releases a lease granted to the ticket meanwhile)
    [ -n "${CALL_ME_TICKET:-}" ] || return 0
    _cm_until=$(($(_cm_now) + 15))
    if _cm_call DELETE "/v1/tickets/$CALL_ME_TICKET" 20 && [ "$_cm_status" = 204 ]; then
        rm -f "$_cm_state/ticket"
        CALL_ME_TICKET=
    else
        _cm_say "could not leave the queue; the server drops the place after its ticket grace (60 s by default)"
    fi
}

_cm_request_id() {
    _cm_id=$(od -An -N16 -tx1 /dev/urandom 2>/dev/null | tr -d ' \n')
    [ -n "$_cm_id" ] || _cm_id=$(date +%s)-$$-${CI_JOB_ID:-0}
    _cm_id=${_cm_ci:-gitlab}-$_cm_id
}

_cm_names() { # LIST: CALL_ME_ENVIRONMENTS taken apart at its commas, spaces around each name dropped; sets "$@"
    # The caller runs `set -f` first: a name is never a glob.
    _cm_old_ifs=$IFS
    IFS=,
    # shellcheck disable=SC2086 # split at the commas, on purpose
    set -- $1
    IFS=$_cm_old_ifs
    _cm_list=
    for _cm_name in "$@"; do
        while :; do case $_cm_name in ' '*) _cm_name=${_cm_name# } ;; *' ') _cm_name=${_cm_name% } ;; *) break ;; esac; done
        [ -z "$_cm_name" ] || _cm_list="$_cm_list$_cm_name$_cm_nl"
    done
}

_cm_acquire_curl() {
    if [ -n "$_cm_group" ]; then
        _cm_target=
        _cm_rest=$_cm_list
        while [ -n "$_cm_rest" ]; do
            _cm_json "${_cm_rest%%"$_cm_nl"*}"
            _cm_target="$_cm_target,{\"environment\":$_cm_out}"
            _cm_rest=${_cm_rest#*"$_cm_nl"}
        done
        _cm_target="\"all\":[${_cm_target#,}]"
    elif [ -n "$CALL_ME_ENVIRONMENT" ]; then
        _cm_json "$CALL_ME_ENVIRONMENT"
        _cm_target="\"environment\":$_cm_out"
    else
        _cm_json "$CALL_ME_LABEL"
        _cm_target="\"label\":$_cm_out"
    fi
    _cm_json "$_cm_holder"
    _cm_fixed="$_cm_target,\"holder\":$_cm_out,\"ttl\":$_cm_ttl,\"metadata\":$_cm_metadata"
    _cm_request_id
    CALL_ME_TICKET=
    trap '_cm_say "stopped while waiting; leaving the queue"; _cm_leave; exit 143' HUP INT TERM
    _cm_wait=0 # the first answer at once: a job stopped in its first long-poll then knows its ticket
    while :; do
        if [ -n "$_cm_deadline" ]; then
            _cm_left=$((_cm_deadline - $(_cm_now)))
            if [ "$_cm_left" -le 0 ]; then
                _cm_leave
                rm -f "$_cm_state/request.json" "$_cm_state/withdraw.json" # this job gave up itself: after_script has nothing to ask
                _cm_die 4 "gave up waiting for $_cm_what after ${CALL_ME_TIMEOUT}s ($_cm_n_timeout) and left the queue;" \
                    "raise $_cm_n_timeout, or see who holds it: GET $CALL_ME_URL/v1/environments"
            fi
            [ "$_cm_left" -ge "$_cm_wait" ] || _cm_wait=$_cm_left
        fi
        _cm_until=$(($(_cm_now) + _cm_retry_for))
        [ -z "$_cm_deadline" ] || [ "$_cm_until" -le "$_cm_deadline" ] || _cm_until=$_cm_deadline
        _cm_body_json="{$_cm_fixed,\"wait\":$_cm_wait,\"request_id\":\"$_cm_id\""
        [ -z "$CALL_ME_TICKET" ] || _cm_body_json="$_cm_body_json,\"ticket\":\"$CALL_ME_TICKET\""
        printf '%s}' "$_cm_body_json" >"$_cm_state/request.json"
        # What after_script asks again with if the job is killed before it learns what this request made.
        printf '{%s,"wait":0,"queue":false,"request_id":"%s"}' "$_cm_fixed" "$_cm_id" >"$_cm_state/withdraw.json"
        if ! _cm_call POST /v1/leases $((_cm_wait + 30)) -H 'Content-Type: application/json' \
            --data-binary @"$_cm_state/request.json"; then
            [ -z "$_cm_deadline" ] || [ "$(_cm_now)" -lt "$_cm_deadline" ] || continue # its own message
            _cm_last=$_cm_status # _cm_leave makes a call of its own
            _cm_leave
            rm -f "$_cm_state/request.json" "$_cm_state/withdraw.json" # unreachable for CALL_ME_RETRY_FOR: after_script would wait as long again
            case $_cm_last in
            000) _cm_die 5 "could not reach $CALL_ME_URL for ${_cm_retry_for}s; is the server up, and CALL_ME_URL right?" ;;
            *) _cm_die 5 "gave up after ${_cm_retry_for}s of retries (CALL_ME_RETRY_FOR): $CALL_ME_URL still answers" \
                "HTTP $_cm_status, so the call-me server or a proxy in front of it cannot serve requests now;" \
                "run the job again later, or ask the server's admin (its /readyz says whether it reaches its store)" ;;
            esac
        fi
        # An answer came: what the request made is known. withdraw.json stays until that is written down (a 201's
        # lease by _cm_acquire, a 202's ticket below), in case the job is killed in between.
        case $_cm_status in 201 | 202) ;; *) rm -f "$_cm_state/request.json" "$_cm_state/withdraw.json" ;; esac
        case $_cm_status in
        201)
            _cm_parse "$_cm_body" || _cm_die 1 "the server's answer is not KEY='value' lines; is CALL_ME_URL a call-me server?"
            if [ -n "$_cm_group" ]; then
                if [ -z "${CALL_ME_GROUP_ID:-}" ] || [ -z "${CALL_ME_GROUP_TOKEN:-}" ]; then
                    _cm_die 1 "the server's answer has no group id or token"
                fi
            elif [ -z "${CALL_ME_LEASE_ID:-}" ] || [ -z "${CALL_ME_LEASE_TOKEN:-}" ]; then
                _cm_die 1 "the server's answer has no lease id or token"
            fi
            rm -f "$_cm_state/ticket" # withdraw.json goes once the lease is written (_cm_acquire)
            trap - HUP INT TERM
            return 0
            ;;
        202)
            if ! _cm_parse "$_cm_body" || [ -z "${CALL_ME_TICKET:-}" ]; then
                _cm_die 1 "the server's answer is not KEY='value' lines; is CALL_ME_URL a call-me server?"
            fi
            # after_script (pre-exit) leaves the queue with it if the job is stopped while it waits.
            _cm_write "$_cm_state/ticket" CALL_ME_TICKET
            rm -f "$_cm_state/request.json" "$_cm_state/withdraw.json"
            _cm_say "waiting for $_cm_what (position ${CALL_ME_POSITION:-?} in queue, $(($(_cm_now) - _cm_started))s so far)"
            _cm_wait=25 # the server holds a long-poll at most its max_wait (25 s by default)
            ;;
        410)
            _cm_say "our place in the queue was dropped (the server restarted past its grace, or an admin); queueing again"
            CALL_ME_TICKET=
            _cm_wait=0
            _cm_request_id
            ;;
        *) _cm_refused "could not acquire $_cm_what" ;;
        esac
    done
}

_cm_acquire_cli() {
    # Values as --flag=value and the environment after --: a name (or holder) may begin with a dash.
    set -- request --output env --ttl "$_cm_ttl" --holder="$_cm_holder"
    [ -z "${CALL_ME_TIMEOUT:-}" ] || set -- "$@" --timeout "$CALL_ME_TIMEOUT"
    [ -z "${CI_JOB_URL:-}" ] || set -- "$@" --meta "job_url=$CI_JOB_URL"
    [ -z "${CI_COMMIT_SHA:-}" ] || set -- "$@" --meta "commit=$CI_COMMIT_SHA"
    [ -z "${CI_PROJECT_PATH:-}" ] || set -- "$@" --meta "project=$CI_PROJECT_PATH"
    if [ -n "$_cm_group" ]; then
        _cm_rest=${_cm_list#*"$_cm_nl"}
        while [ -n "$_cm_rest" ]; do
            set -- "$@" --and="${_cm_rest%%"$_cm_nl"*}"
            _cm_rest=${_cm_rest#*"$_cm_nl"}
        done
        set -- "$@" -- "${_cm_list%%"$_cm_nl"*}"
    elif [ -n "$CALL_ME_ENVIRONMENT" ]; then
        set -- "$@" -- "$CALL_ME_ENVIRONMENT"
    else
        set -- "$@" --label="$CALL_ME_LABEL"
    fi
    # The CLI keeps the token in its state file, so `release --lease ID` needs no --token.
    _cm_out=$(CALL_ME_URL=$CALL_ME_URL CALL_ME_STATE_FILE="$_cm_state/cli-state.json" call-me "$@")
    _cm_code=$?
    [ "$_cm_code" = 0 ] || _cm_die "$_cm_code" "could not acquire $_cm_what (call-me exited with $_cm_code)"
    if ! _cm_parse "$_cm_out" || [ -z "${CALL_ME_LEASE_ID:-}${CALL_ME_GROUP_ID:-}" ]; then
        _cm_die 1 "call-me request --output env printed no lease; is the CLI in the image up to date?"
    fi
}

_cm_acquire() {
    CALL_ME_ENVIRONMENT=${CALL_ME_ENVIRONMENT:-}
    CALL_ME_LABEL=${CALL_ME_LABEL:-}
    CALL_ME_ENVIRONMENTS=${CALL_ME_ENVIRONMENTS:-}
    _cm_group=
    if [ -n "$CALL_ME_ENVIRONMENTS" ]; then
        [ -z "$CALL_ME_ENVIRONMENT$CALL_ME_LABEL" ] ||
            _cm_die 2 "$_cm_n_envs is set with $_cm_n_env or $_cm_n_label; keep the list alone"
        set -f
        _cm_names "$CALL_ME_ENVIRONMENTS"
        set +f
        [ -n "$_cm_list" ] || _cm_die 2 "$_cm_n_envs='$CALL_ME_ENVIRONMENTS' names no environment"
        _cm_group=1
        _cm_replace "${_cm_list%"$_cm_nl"}" "$_cm_nl" ", "
        _cm_what="environments $_cm_out (all at once)"
    elif [ -n "$CALL_ME_ENVIRONMENT" ] && [ -n "$CALL_ME_LABEL" ]; then
        _cm_die 2 "both $_cm_n_env ($CALL_ME_ENVIRONMENT) and $_cm_n_label ($CALL_ME_LABEL) are set; keep one"
    elif [ -n "$CALL_ME_ENVIRONMENT" ]; then
        _cm_what="environment $CALL_ME_ENVIRONMENT"
    elif [ -n "$CALL_ME_LABEL" ]; then
        _cm_what="an environment labelled $CALL_ME_LABEL"
    else
        if [ -n "$_cm_n_envs" ]; then
            _cm_die 2 "none of $_cm_n_env, $_cm_n_label and $_cm_n_envs is set; $_cm_set_target"
        fi
        _cm_die 2 "neither $_cm_n_env nor $_cm_n_label is set; $_cm_set_target"
    fi
    _cm_settings
    # after_script does not run when the job times out: the lease must outlive the job by itself.
    _cm_ttl=${CALL_ME_TTL:-}
    if [ -z "$_cm_ttl" ]; then
        case ${CI_JOB_TIMEOUT:-} in '' | *[!0-9]*) _cm_ttl=3600 ;; *) _cm_ttl=$CI_JOB_TIMEOUT ;; esac
        _cm_ttl=$((_cm_ttl + ${CALL_ME_TTL_MARGIN:-600}))
        [ "$_cm_ttl" -le 86400 ] || _cm_ttl=86400 # the server's default max_ttl
    fi
    case $_cm_ttl in '' | *[!0-9]* | 0) _cm_die 2 "$_cm_n_ttl='$_cm_ttl' is not a whole number of seconds above 0" ;; esac
    _cm_started=$(_cm_now)
    _cm_deadline=
    case ${CALL_ME_TIMEOUT:-} in
    '') ;;
    *[!0-9]*) _cm_die 2 "$_cm_n_timeout='$CALL_ME_TIMEOUT' is not a whole number of seconds" ;;
    *) _cm_deadline=$((_cm_started + CALL_ME_TIMEOUT)) ;;
    esac
    _cm_holder=${CALL_ME_HOLDER:-${CI_PROJECT_PATH:-local}#${CI_PIPELINE_ID:-0} ${CI_JOB_NAME:-job}}
    _cm_metadata=
    for _cm_pair in "job_url=${CI_JOB_URL:-}" "commit=${CI_COMMIT_SHA:-}" "project=${CI_PROJECT_PATH:-}" \
        "pipeline_id=${CI_PIPELINE_ID:-}" "job=${CI_JOB_NAME:-}"; do
        [ -n "${_cm_pair#*=}" ] || continue
        _cm_json "${_cm_pair#*=}"
        _cm_metadata="$_cm_metadata,\"${_cm_pair%%=*}\":$_cm_out"
    done
    _cm_metadata="{${_cm_metadata#,}}"
    rm -f "$_cm_state/lease" "$_cm_state/variables" "$_cm_state/ticket"
    _cm_say "acquiring $_cm_what for $_cm_ttl s from $CALL_ME_URL (with $_cm_client)"
    CALL_ME_LEASE_ID='' CALL_ME_LEASE_TOKEN='' CALL_ME_FENCE='' CALL_ME_EXPIRES_AT=''
    CALL_ME_GROUP_ID='' CALL_ME_GROUP_TOKEN=''
    if [ "$_cm_client" = cli ]; then _cm_acquire_cli; else _cm_acquire_curl; fi
    CALL_ME_ACQUIRED_BY=$_cm_client
    CALL_ME_ACQUIRED_AT=$(_cm_now)
    if [ -n "$_cm_group" ]; then
        _cm_acquired_group
        return 0
    fi
    # Written before anything else can fail, so that after_script always finds the lease.
    # shellcheck disable=SC2086 # _cm_props is a list of variable names
    _cm_write "$_cm_state/lease" CALL_ME_LEASE_ID CALL_ME_LEASE_TOKEN CALL_ME_ENVIRONMENT CALL_ME_FENCE \
        CALL_ME_ACQUIRED_BY CALL_ME_ACQUIRED_AT || _cm_die 1 "cannot write the lease to $_cm_state/lease"
    rm -f "$_cm_state/request.json" "$_cm_state/withdraw.json"
    # What the job's script sees (the YAML sources this file after the subshell): never the token.
    : >"$_cm_state/variables.new"
    # shellcheck disable=SC2086 # _cm_props is a list of variable names
    for _cm_name in CALL_ME_ENVIRONMENT CALL_ME_FENCE CALL_ME_LEASE_ID CALL_ME_EXPIRES_AT $_cm_props; do
        eval "_cm_quote \"\${$_cm_name:-}\""
        printf 'export %s=%s\n' "$_cm_name" "$_cm_out" >>"$_cm_state/variables.new"
    done
    mv -f "$_cm_state/variables.new" "$_cm_state/variables"
    _cm_say "acquired $CALL_ME_ENVIRONMENT (fence $CALL_ME_FENCE, lease $CALL_ME_LEASE_ID," \
        "waited $(($(_cm_now) - _cm_started))s); $_cm_releaser releases it, else it expires at ${CALL_ME_EXPIRES_AT:-its TTL}"
}

_cm_withdraw() { # the job was killed before it learnt what its POST made: ask again by request_id, give it back
    # The same request_id returns what the first request created (API.md): its lease, token and all, or its
    # ticket's place. Asked with queue:false and no wait, it takes no new place; a lease it grants now, because the
    # first POST made nothing and a slot is free, is given back too.
    _cm_until=$(($(_cm_now) + 15))
    if ! _cm_call POST /v1/leases 20 -H 'Content-Type: application/json' --data-binary @"$_cm_state/withdraw.json"; then
        _cm_say "could not ask what the stopped job's request made; a lease it got expires after its TTL"
        return 0
    fi
    case $_cm_status in
    201)
        CALL_ME_GROUP_ID='' CALL_ME_LEASE_ID=''
        _cm_parse "$_cm_body" || return 0
        if [ -n "${CALL_ME_GROUP_ID:-}" ]; then # several environments at once: released as a group
            CALL_ME_LEASE_ID=$CALL_ME_GROUP_ID CALL_ME_LEASE_TOKEN=$CALL_ME_GROUP_TOKEN CALL_ME_ENVIRONMENT=group
            _cm_path=/v1/groups
        else
            _cm_path=/v1/leases
        fi
        printf 'X-Lease-Token: %s\n' "$CALL_ME_LEASE_TOKEN" >"$_cm_state/token-header"
        _cm_until=$(($(_cm_now) + 15))
        if _cm_call DELETE "$_cm_path/$CALL_ME_LEASE_ID" 20 -H @"$_cm_state/token-header" && [ "$_cm_status" = 204 ]; then
            _cm_say "released $CALL_ME_ENVIRONMENT (lease $CALL_ME_LEASE_ID), granted as the job stopped"
        else
            _cm_say "could not release lease $CALL_ME_LEASE_ID; it expires after its TTL"
        fi
        ;;
    202)
        _cm_parse "$_cm_body" && _cm_leave && _cm_say "left the queue"
        ;;
    *) _cm_say "its request made nothing that is still held (HTTP $_cm_status)" ;;
    esac
}

_cm_acquired_group() { # the lease file and the job's variables of several environments held at once
    _cm_write "$_cm_state/lease" CALL_ME_GROUP_ID CALL_ME_GROUP_TOKEN CALL_ME_ENVIRONMENTS \
        CALL_ME_ACQUIRED_BY CALL_ME_ACQUIRED_AT || _cm_die 1 "cannot write the lease to $_cm_state/lease"
    rm -f "$_cm_state/request.json" "$_cm_state/withdraw.json"
    : >"$_cm_state/variables.new"
    # shellcheck disable=SC2086 # _cm_props is a list of variable names
    for _cm_name in CALL_ME_ENVIRONMENTS CALL_ME_GROUP_ID $_cm_props; do
        eval "_cm_quote \"\${$_cm_name:-}\""
        printf 'export %s=%s\n' "$_cm_name" "$_cm_out" >>"$_cm_state/variables.new"
    done
    mv -f "$_cm_state/variables.new" "$_cm_state/variables"
    _cm_say "acquired $_cm_what (group $CALL_ME_GROUP_ID, waited $(($(_cm_now) - _cm_started))s);" \
        "after_script releases them all, else they expire after CALL_ME_TTL"
}

_cm_release_group() { # after_script for several environments held at once: release the group
    _cm_held=$(($(_cm_now) - ${CALL_ME_ACQUIRED_AT:-0}))
    _cm_code=0
    if [ "${CALL_ME_ACQUIRED_BY:-}" = cli ] && command -v call-me >/dev/null 2>&1; then
        # The CLI keeps each lease of the group in its state file: each is released by its name.
        set -f
        _cm_names "$CALL_ME_ENVIRONMENTS"
        set +f
        _cm_rest=$_cm_list
        while [ -n "$_cm_rest" ]; do
            CALL_ME_URL=$CALL_ME_URL CALL_ME_STATE_FILE="$_cm_state/cli-state.json" \
                call-me release -- "${_cm_rest%%"$_cm_nl"*}" >/dev/null || _cm_code=$?
            _cm_rest=${_cm_rest#*"$_cm_nl"}
        done
    else
        printf 'X-Lease-Token: %s\n' "$CALL_ME_GROUP_TOKEN" >"$_cm_state/token-header"
        _cm_until=$(($(_cm_now) + _cm_retry_for))
        if _cm_call DELETE "/v1/groups/$CALL_ME_GROUP_ID" 30 -H @"$_cm_state/token-header"; then
            case $_cm_status in
            204) ;;
            410) _cm_say "a lease of group $CALL_ME_GROUP_ID had already ended (expired or revoked) before this" \
                "release; raise CALL_ME_TTL if the job needs longer" ;;
            *)
                _cm_say "could not release $CALL_ME_ENVIRONMENTS: HTTP $_cm_status: $_cm_body"
                _cm_code=1
                ;;
            esac
        else
            _cm_code=5
        fi
    fi
    rm -rf "$_cm_state"
    if [ "$_cm_code" = 0 ]; then
        _cm_say "released $CALL_ME_ENVIRONMENTS (group $CALL_ME_GROUP_ID, held ${_cm_held}s)"
    else
        _cm_die "$_cm_code" "group $CALL_ME_GROUP_ID ($CALL_ME_ENVIRONMENTS) was not released; it ends by itself at its TTL"
    fi
}

_cm_release() {
    if [ ! -f "$_cm_state/lease" ]; then
        if [ -f "$_cm_state/ticket" ]; then
            _cm_settings
            _cm_parse "$(cat "$_cm_state/ticket")"
            _cm_say "the job stopped while waiting; leaving the queue"
            _cm_leave
        elif [ -f "$_cm_state/withdraw.json" ]; then
            _cm_settings
            _cm_say "the job stopped while its request was on its way; asking the server what it made"
            _cm_withdraw
        else
            _cm_say "no lease to release ($_cm_acquirer did not acquire one)"
        fi
        rm -rf "$_cm_state"
        return 0
    fi
    _cm_settings
    CALL_ME_GROUP_ID=
    if _cm_parse "$(cat "$_cm_state/lease")" && [ -n "${CALL_ME_GROUP_ID:-}" ]; then
        _cm_release_group
        return 0
    fi
    if ! _cm_parse "$(cat "$_cm_state/lease")" || [ -z "${CALL_ME_LEASE_ID:-}" ]; then
        _cm_die 1 "$_cm_state/lease is damaged; the lease expires after its TTL"
    fi
    _cm_held=$(($(_cm_now) - ${CALL_ME_ACQUIRED_AT:-0}))
    if [ "${CALL_ME_ACQUIRED_BY:-}" = cli ] && command -v call-me >/dev/null 2>&1; then
        if CALL_ME_URL=$CALL_ME_URL CALL_ME_STATE_FILE="$_cm_state/cli-state.json" \
            call-me release --lease "$CALL_ME_LEASE_ID" -- "$CALL_ME_ENVIRONMENT" >/dev/null; then
            _cm_code=0
        else
            _cm_code=$?
        fi
    else
        printf 'X-Lease-Token: %s\n' "$CALL_ME_LEASE_TOKEN" >"$_cm_state/token-header"
        _cm_until=$(($(_cm_now) + _cm_retry_for))
        if _cm_call DELETE "/v1/leases/$CALL_ME_LEASE_ID" 30 -H @"$_cm_state/token-header"; then
            case $_cm_status in
            204) _cm_code=0 ;;
            410) _cm_say "lease $CALL_ME_LEASE_ID on $CALL_ME_ENVIRONMENT had already ended (expired or revoked)" \
                "before this release; raise $_cm_n_ttl if the job needs longer" && _cm_code=0 ;;
            *)
                _cm_say "could not release $CALL_ME_ENVIRONMENT: HTTP $_cm_status: $_cm_body"
                _cm_code=1
                ;;
            esac
        else
            _cm_code=5
        fi
    fi
    rm -rf "$_cm_state"
    if [ "$_cm_code" = 0 ]; then
        _cm_say "released $CALL_ME_ENVIRONMENT (lease $CALL_ME_LEASE_ID, held ${_cm_held}s)"
    else
        _cm_die "$_cm_code" "lease $CALL_ME_LEASE_ID on $CALL_ME_ENVIRONMENT was not released; it ends by itself at its TTL"
    fi
}

case ${1:-} in
acquire) _cm_acquire ;;
release) _cm_release ;;
*) _cm_die 2 "usage: call-me.sh acquire|release" ;;
esac
