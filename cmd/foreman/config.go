package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nkeys"
	"github.com/spf13/pflag"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/cmd/foreman/app"
	"gitea.stevedudenhoeffer.com/steve/foreman/gateway"
	"gitea.stevedudenhoeffer.com/steve/foreman/gateway/webhook"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// serveConfig is everything `foreman serve` is configured with: app.Config, whose fields
// each come from a flag, else from its FOREMAN_* variable, else from its default, and the
// log level.
type serveConfig struct {
	app.Config
	LogLevel     slog.Level
	logLevelName string
}

// setting binds one field to its flag and environment variable.
type setting struct {
	env, flag, def, usage string
	parse                 func(string) error
	raw                   string
	noOpt                 string // the value of the bare flag (--flag without =value)
}

func (c *serveConfig) settings() []*setting {
	str := func(p *string) func(string) error { return func(v string) error { *p = v; return nil } }
	dur := func(p *time.Duration) func(string) error {
		return func(v string) error {
			d, err := time.ParseDuration(v)
			if err != nil {
				return errors.New("not a duration (e.g. 30s, 2m, 24h)")
			}
			if d <= 0 {
				return errors.New("must be positive")
			}
			*p = d
			return nil
		}
	}
	// atLeast is dur with a floor, for the durations that fail later, or make foreman busy
	// for nothing, when they are tiny.
	atLeast := func(p *time.Duration, floor time.Duration, why string) func(string) error {
		return func(v string) error {
			var d time.Duration
			if err := dur(&d)(v); err != nil {
				return err
			}
			if d < floor {
				return fmt.Errorf("must be at least %s: %s", floor, why)
			}
			*p = d
			return nil
		}
	}
	integer := func(p *int) func(string) error {
		return func(v string) error {
			n, err := strconv.Atoi(v)
			if err != nil {
				return errors.New("not an integer")
			}
			if n <= 0 {
				return errors.New("must be positive")
			}
			*p = n
			return nil
		}
	}
	atMost := func(p *int, ceiling int) func(string) error {
		return func(v string) error {
			var n int
			if err := integer(&n)(v); err != nil {
				return err
			}
			if n > ceiling {
				return fmt.Errorf("must be at most %d", ceiling)
			}
			*p = n
			return nil
		}
	}
	priority := func(p *broker.Priority) func(string) error {
		return func(v string) error {
			got, err := broker.ParsePriority(v)
			if err != nil {
				return errors.New("not a priority: must be high, normal or low")
			}
			*p = got
			return nil
		}
	}
	return []*setting{
		{env: "FOREMAN_ADDR", flag: "addr", def: app.DefaultAddr, usage: "HTTP listen address", parse: hostPort(&c.Addr)},
		{env: "FOREMAN_OLLAMA_URL", flag: "ollama-url", def: app.DefaultOllamaURL, usage: "URL of the Ollama server foreman fronts", parse: httpURL(&c.OllamaURL)},
		{env: "FOREMAN_OLLAMA_TOKEN", flag: "ollama-token", usage: "bearer token sent to Ollama", parse: ollamaToken(&c.OllamaToken)},
		{env: "FOREMAN_AUTH_TOKEN", flag: "auth-token", usage: "bearer token HTTP clients must send (off when empty)", parse: headerToken(&c.AuthToken)},
		{env: "FOREMAN_DATA_DIR", flag: "data-dir", usage: "JetStream store directory (default: foreman in the user's data dir)", parse: str(&c.DataDir)},
		{env: "FOREMAN_NATS_LISTEN", flag: "nats-listen", usage: "host:port of a NATS listener for clients (off when empty)", parse: optionalHostPort(&c.NATSListen)},
		{env: "FOREMAN_NATS_URL", flag: "nats-url", usage: "external NATS URL(s); no embedded server when set", parse: natsURLs(&c.NATSURL)},
		{env: "FOREMAN_NATS_USER", flag: "nats-user", usage: "client user on the NATS listener", parse: str(&c.NATSUser)},
		{env: "FOREMAN_NATS_PASSWORD", flag: "nats-password", usage: "client password on the NATS listener", parse: str(&c.NATSPassword)},
		{env: "FOREMAN_NATS_NKEY", flag: "nats-nkey", usage: "public user nkey (U…) that may also log in on the NATS listener", parse: str(&c.NATSNkey)},
		{env: "FOREMAN_NATS_TLS_CERT", flag: "nats-tls-cert", usage: "TLS certificate file for the NATS listener", parse: str(&c.NATSTLSCert)},
		{env: "FOREMAN_NATS_TLS_KEY", flag: "nats-tls-key", usage: "TLS key file for the NATS listener", parse: str(&c.NATSTLSKey)},
		// Logging in to an external NATS cluster (FOREMAN_NATS_URL only).
		{env: "FOREMAN_NATS_CREDS", flag: "nats-creds", usage: "credentials file (.creds: user JWT and nkey seed) to log in to FOREMAN_NATS_URL", parse: readableFile(&c.NATSCreds)},
		{env: "FOREMAN_NATS_NKEY_SEED", flag: "nats-nkey-seed", usage: "file holding a user nkey seed (SU…) to log in to FOREMAN_NATS_URL", parse: readableFile(&c.NATSNkeySeed)},
		{env: "FOREMAN_NATS_CA", flag: "nats-ca", usage: "PEM file of the CA(s) that signed FOREMAN_NATS_URL's TLS certificates", parse: readableFile(&c.NATSCA)},
		{env: "FOREMAN_NATS_REPLICAS", flag: "nats-replicas", usage: "replicas of foreman's streams (default 1 embedded, 3 with FOREMAN_NATS_URL; 1 on a single NATS server)", parse: integer(&c.NATSReplicas)},
		{env: "FOREMAN_POLL_INTERVAL", flag: "poll-interval", def: durationDefault(app.DefaultPollInterval), usage: "how often the model inventory polls Ollama", parse: atLeast(&c.PollInterval, minPollInterval, "every poll asks Ollama twice and writes to NATS")},
		{env: "FOREMAN_MAX_ATTEMPTS", flag: "max-attempts", def: strconv.Itoa(app.DefaultMaxAttempts), usage: "attempts per job on retried failures (unreachable, stalled, a sync call's 503/429, a runner that died)", parse: atMost(&c.MaxAttempts, maxAttempts)},
		{env: "FOREMAN_ACK_WAIT", flag: "ack-wait", def: durationDefault(app.DefaultAckWait), usage: "how long a job whose foreman died waits before it runs again (with --nats-url; embedded: at once)", parse: atLeast(&c.AckWait, minAckWait, "a running job renews it every third of it")},
		{env: "FOREMAN_JOB_TTL", flag: "job-ttl", def: durationDefault(app.DefaultJobTTL), usage: "how long jobs, artifacts and delivery logs are kept", parse: atLeast(&c.JobTTL, minJobTTL, "shorter, jobs could expire before they run")},
		{env: "FOREMAN_WEBHOOK_SECRET", flag: "webhook-secret", usage: "webhook signing secret (whsec_<base64> or raw)", parse: str(&c.WebhookSecret)},
		{env: "FOREMAN_WEBHOOK_ATTEMPTS", flag: "webhook-attempts", def: strconv.Itoa(app.DefaultWebhookAttempts), usage: "delivery attempts per webhook event", parse: integer(&c.WebhookAttempts)},
		// Webhook network policy (ADR-0021).
		{env: "FOREMAN_WEBHOOK_ALLOW_NETS", flag: "webhook-allow-nets", usage: "comma-separated CIDRs webhooks may reach though the policy refuses them (e.g. 127.0.0.0/8,::1/128)", parse: func(v string) error {
			nets, err := webhook.ParseNets(v)
			c.WebhookAllowNets = nets
			return err
		}},
		{env: "FOREMAN_WEBHOOK_DENY_PRIVATE", flag: "webhook-deny-private", def: "false", usage: "refuse webhooks to private LAN ranges and 100.64.0.0/10 too (true or false)", parse: func(v string) error {
			switch v {
			case "true", "false":
				c.WebhookDenyPrivate = v == "true"
				return nil
			}
			return errors.New("not true or false")
		}},
		{env: "FOREMAN_EMBED_MODEL", flag: "embed-model", usage: "embedding model kept loaded (keep_alive -1)", parse: str(&c.EmbedModel)},
		{env: "FOREMAN_LOG_LEVEL", flag: "log-level", def: "info", usage: "debug, info, warn or error", parse: c.parseLevel},
		{env: "FOREMAN_MAX_QUEUE", flag: "max-queue", def: strconv.Itoa(app.DefaultMaxQueue), usage: "queued jobs before submits get 503; HTTP connections at once are capped at this + 1024, one remote address's at half of that", parse: integer(&c.MaxQueue)},
		{env: "FOREMAN_MAX_CONSECUTIVE", flag: "max-consecutive", def: strconv.Itoa(app.DefaultMaxConsecutive), usage: "jobs of one model in a row while others wait", parse: integer(&c.MaxConsecutive)},
		{env: "FOREMAN_MAX_WAIT", flag: "max-wait", def: durationDefault(app.DefaultMaxWait), usage: "longest a waiting model is passed over", parse: dur(&c.MaxWait)},
		{env: "FOREMAN_MAX_BODY", flag: "max-body", def: strconv.Itoa(app.DefaultMaxBodyBytes), usage: "largest request body in bytes", parse: func(v string) error {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n <= 0 {
				return errors.New("not a positive number of bytes")
			}
			c.MaxBodyBytes = n
			return nil
		}},
		{env: "FOREMAN_MAX_BODY_BYTES_IN_FLIGHT", flag: "max-body-bytes-in-flight", usage: "request body bytes held at once, all requests together, before a body gets 503 (default 4 × FOREMAN_MAX_BODY)", parse: func(v string) error {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n <= 0 {
				return errors.New("not a positive number of bytes")
			}
			c.MaxBodyBytesInFlight = n
			return nil
		}},
		{env: "FOREMAN_SHUTDOWN_TIMEOUT", flag: "shutdown-timeout", def: durationDefault(app.DefaultShutdownTimeout), usage: "deadline for a graceful shutdown", parse: dur(&c.ShutdownTimeout)},
		{env: "FOREMAN_PPROF_ADDR", flag: "pprof-addr", usage: "loopback host:port serving Go's runtime profiles under /debug/pprof/ (off when empty)", parse: optionalHostPort(&c.PprofAddr)},
		// A stalled target is a failed attempt (ADR-0026).
		{env: "FOREMAN_FIRST_BYTE_TIMEOUT", flag: "first-byte-timeout", def: durationDefault(app.DefaultFirstByteTimeout), usage: "longest wait for Ollama's first response byte (of a stream: its first line or event with data), a cold model load included; then the attempt fails (a call that does not stream has none: see --nonstream-timeout)", parse: dur(&c.FirstByteTimeout)},
		{env: "FOREMAN_STREAM_IDLE_TIMEOUT", flag: "stream-idle-timeout", def: durationDefault(app.DefaultStreamIdleTimeout), usage: "longest silence of Ollama once its answer started (no line or event with data; of an answer in one piece, no MiB of it nor its end; a drip of bytes counts as silence), and longest an error status's body may take after the status; then the attempt fails", parse: dur(&c.StreamIdleTimeout)},
		{env: "FOREMAN_MAX_JOB_TIME", flag: "max-job-time", usage: "longest one attempt of a job may run (off when empty); then the job fails", parse: dur(&c.MaxJobTime)},
		{env: "FOREMAN_NONSTREAM_TIMEOUT", flag: "nonstream-timeout", def: durationDefault(app.DefaultNonStreamTimeout), usage: "longest a non-streamed answer (embeddings, the image routes, a debug render) may take, load included; then the job fails", parse: dur(&c.NonStreamTimeout)},
		// Browser policy (ADR-0023) and slow clients.
		{env: "FOREMAN_ORIGINS", flag: "origins", usage: "browser origins allowed besides localhost and co (comma list, * for all; as OLLAMA_ORIGINS)", parse: func(v string) error {
			o, err := gateway.ParseOrigins(v)
			c.Origins = o
			return err
		}},
		{env: "FOREMAN_INSECURE_NO_AUTH", flag: "insecure-no-auth", def: "false", noOpt: "true", usage: "serve a non-loopback FOREMAN_ADDR without FOREMAN_AUTH_TOKEN (true/false)", parse: func(v string) error {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return errors.New("not true or false")
			}
			c.InsecureNoAuth = b
			return nil
		}},
		{env: "FOREMAN_BODY_READ_TIMEOUT", flag: "body-read-timeout", def: durationDefault(app.DefaultBodyReadTimeout), usage: "longest a client may take to send a request body (408 beyond)", parse: dur(&c.BodyReadTimeout)},
		{env: "FOREMAN_WRITE_TIMEOUT", flag: "write-timeout", def: durationDefault(app.DefaultWriteTimeout), usage: "longest a write of an answer may make no progress before the client is cut off", parse: dur(&c.WriteTimeout)},
		{env: "FOREMAN_STREAM_BUFFER", flag: "stream-buffer", def: strconv.Itoa(app.DefaultStreamBuffer), usage: "bytes of a queued answer held for a slow client before it is cut off", parse: func(v string) error {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n <= 0 {
				return errors.New("not a positive number of bytes")
			}
			c.StreamBuffer = n
			return nil
		}},
		{env: "FOREMAN_SYNC_OUTAGE_WAIT", flag: "sync-outage-wait", def: minutesDefault(app.DefaultSyncOutageWait), usage: "longest a chat or generate call waits while Ollama is unreachable; then its job is canceled (502). Also how long the worker keeps an attempt Ollama leaves silent while it answers no poll, before retrying it (on another Mac with the model)", parse: dur(&c.SyncOutageWait)},
		// Priority classes and programs.
		{env: "FOREMAN_AUTH_TOKENS", flag: "auth-tokens", usage: "named bearer tokens, name:token,...: each is accepted and its name is the caller's program (excludes FOREMAN_AUTH_TOKEN)", parse: func(v string) error {
			ts, err := gateway.ParseAuthTokens(v)
			c.AuthTokens = append(c.AuthTokens, ts...)
			return err
		}},
		{env: "FOREMAN_AUTH_TOKENS_FILE", flag: "auth-tokens-file", usage: "file of named bearer tokens, one name:token a line, a line starting with # a comment; read at start", parse: str(&c.AuthTokensFile)},
		{env: "FOREMAN_MODEL_ADMINS", flag: "model-admins", usage: "programs of named tokens that may change the models (pull, push, create, copy, delete, aliases, blob uploads), comma list; others get 403 there (default: every token)", parse: func(v string) error {
			c.ModelAdmins = nil
			for _, p := range strings.Split(v, ",") {
				p = strings.TrimSpace(p)
				if p == "" {
					continue
				}
				if err := broker.ValidateProgram(p); err != nil {
					return err
				}
				c.ModelAdmins = append(c.ModelAdmins, p)
			}
			return nil
		}},
		{env: "FOREMAN_MAX_QUEUE_PER_PROGRAM", flag: "max-queue-per-program", usage: "queued jobs one program may have before its submits get 429 (no limit when empty)", parse: integer(&c.MaxQueuePerProgram)},
		{env: "FOREMAN_SYNC_PRIORITY", flag: "sync-priority", def: "high", usage: "priority of Ollama/OpenAI chat and generate calls without X-Foreman-Priority", parse: priority(&c.SyncPriority)},
		{env: "FOREMAN_JOBS_PRIORITY", flag: "jobs-priority", def: "normal", usage: "priority of /jobs and NATS submits that name none", parse: priority(&c.JobsPriority)},
		// Several Macs on one NATS (ADR-0029).
		{env: "FOREMAN_TARGET_NAME", flag: "target-name", usage: "name of this foreman's Ollama among those sharing the NATS (default: the host name)", parse: targetName(&c.TargetName)},
	}
}

// Bounds of the settings whose extremes fail later or make no sense: a job TTL under
// JetStream's floor of a stream's max age (100ms) fails the store's set-up, and one barely
// above it expires jobs before they run; an ack wait so short that a running job's
// keep-alive (every third of it, at least 10ms) comes late lets JetStream hand the job out
// again while it runs; a poll every millisecond keeps Ollama and NATS busy for nothing;
// and the queue's delivery limit, two above the attempts, would wrap around.
const (
	minJobTTL       = time.Second
	minAckWait      = time.Second
	minPollInterval = 100 * time.Millisecond
	maxAttempts     = 100
)

// targetName parses FOREMAN_TARGET_NAME: 1 to 64 letters, digits, '.', '-' or '_' (a
// host name fits), so it reads well in /healthz and makes a NATS KV key.
func targetName(p *string) func(string) error {
	return func(v string) error {
		if v == "" || len(v) > 64 || strings.Trim(v, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_") != "" {
			return errors.New("not a name: 1 to 64 letters, digits, '.', '-' or '_'")
		}
		*p = v
		return nil
	}
}

// checkModelAdmins refuses FOREMAN_MODEL_ADMINS without named tokens (no request would
// prove its program) or naming a program no named token has (a typo would leave the
// models to nobody).
func (c *serveConfig) checkModelAdmins() error {
	if len(c.ModelAdmins) == 0 {
		return nil
	}
	if len(c.AuthTokens) == 0 {
		return errors.New("FOREMAN_MODEL_ADMINS names programs of named tokens, and there are none: " +
			"set FOREMAN_AUTH_TOKENS (or FOREMAN_AUTH_TOKENS_FILE), or leave FOREMAN_MODEL_ADMINS empty")
	}
	named := map[string]bool{}
	for _, t := range c.AuthTokens {
		named[t.Program] = true
	}
	for _, p := range c.ModelAdmins {
		if !named[p] {
			return fmt.Errorf("FOREMAN_MODEL_ADMINS names %q, the program of no named token", p)
		}
	}
	return nil
}

// readAuthTokensFile adds the named tokens of FOREMAN_AUTH_TOKENS_FILE. The file is read
// once, at start; a changed file takes effect at the next start.
func (c *serveConfig) readAuthTokensFile() error {
	if c.AuthTokensFile == "" {
		return nil
	}
	data, err := os.ReadFile(c.AuthTokensFile)
	if err != nil {
		return fmt.Errorf("FOREMAN_AUTH_TOKENS_FILE=%q: %w", c.AuthTokensFile, err)
	}
	ts, err := gateway.ParseAuthTokensFile(data)
	if err != nil {
		return fmt.Errorf("FOREMAN_AUTH_TOKENS_FILE=%q: %w", c.AuthTokensFile, err)
	}
	c.AuthTokens = append(c.AuthTokens, ts...)
	seen := map[string]string{}
	for _, t := range c.AuthTokens {
		if other, dup := seen[t.Token]; dup {
			return fmt.Errorf("FOREMAN_AUTH_TOKENS / FOREMAN_AUTH_TOKENS_FILE: %s and %s have the same token; each token names one program", other, t.Program)
		}
		seen[t.Token] = t.Program
	}
	return nil
}

func (c *serveConfig) parseLevel(v string) error {
	var l slog.Level
	if err := l.UnmarshalText([]byte(v)); err != nil {
		return errors.New("not a log level (debug, info, warn, error)")
	}
	c.LogLevel, c.logLevelName = l, strings.ToLower(v)
	return nil
}

// durationDefault shows a default duration as the settings are written: whole hours,
// else whole minutes from 2m on, else seconds ("24h", "5m", "60s").
func durationDefault(d time.Duration) string {
	switch {
	case d%time.Hour == 0:
		return strconv.FormatInt(int64(d/time.Hour), 10) + "h"
	case d%time.Minute == 0 && d >= 2*time.Minute:
		return strconv.FormatInt(int64(d/time.Minute), 10) + "m"
	}
	return strconv.FormatInt(int64(d/time.Second), 10) + "s"
}

// minutesDefault shows a default of whole minutes in minutes ("1m"), for a setting the
// docs write so where durationDefault would write seconds ("60s").
func minutesDefault(d time.Duration) string {
	if d%time.Minute != 0 || d%time.Hour == 0 {
		return durationDefault(d)
	}
	return strconv.FormatInt(int64(d/time.Minute), 10) + "m"
}

// hostPort accepts host:port with a port number from 0 to 65535 (0 picks a free port),
// so that a port no listener can open is refused here, with its setting named.
func hostPort(p *string) func(string) error {
	return func(v string) error {
		_, port, err := net.SplitHostPort(v)
		if err != nil {
			return errors.New("not host:port")
		}
		if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
			return errors.New("the port is not a number from 0 to 65535")
		}
		*p = v
		return nil
	}
}

func optionalHostPort(p *string) func(string) error {
	return func(v string) error {
		if v == "" {
			*p = ""
			return nil
		}
		return hostPort(p)(v)
	}
}

func httpURL(p *string) func(string) error {
	return func(v string) error {
		u, err := url.Parse(v)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return errors.New("not an absolute http(s) URL" + schemeHint(v))
		}
		// url.Parse takes any digits for a port: one no connection can reach would only
		// make every poll of the target fail, the setting unnamed.
		if port := u.Port(); port != "" {
			if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
				return errors.New("the port is not a number from 1 to 65535")
			}
		}
		if err := ollama.CheckUserinfo(u, v); err != nil {
			return err
		}
		// A path is a prefix every route is called under (an Ollama behind a proxy's
		// path); one that ends in a route's own first segment would call /api/api/chat,
		// every poll a 404.
		if seg := path.Base(strings.TrimRight(u.Path, "/")); seg == "api" || seg == "v1" {
			return errors.New("the path ends in /" + seg + ": give the server's own URL, without /" + seg + " (foreman adds /api/... and /v1/... itself)")
		}
		*p = strings.TrimRight(v, "/")
		return nil
	}
}

// schemeHint tells how to mend a URL written without its scheme, as OLLAMA_HOST takes
// one (mac.lan:11434): the value itself is not repeated, as it may hold a password.
func schemeHint(v string) string {
	if strings.Contains(v, "://") {
		return ""
	}
	return " (begin it with http:// or https://)"
}

// headerToken accepts the token clients send in an HTTP header. A header's value reaches
// foreman without the white space around it, and cannot hold control characters: a token
// with either (a line end or a blank carried over from the file or line it was copied
// from) would match no request, and every call would get 401.
func headerToken(p *string) func(string) error {
	return func(v string) error {
		if strings.TrimSpace(v) != v {
			return errors.New("has white space at its start or end, which no HTTP header carries: no client could send it")
		}
		if err := sendableToken(v, "no client could send it"); err != nil {
			return err
		}
		if err := commentAfterToken(v); err != nil {
			return err
		}
		*p = v
		return nil
	}
}

// commentAfterToken refuses a token that carries a comment written after it ("tok  #
// prod"): systemd's EnvironmentFile (and docker run --env-file) keep such a comment as
// part of the value, and every caller sending the token alone would get 401. A # within
// a token is kept.
func commentAfterToken(v string) error {
	if gateway.CommentAfter(v) {
		return errors.New("is followed by a comment (white space, then #), which an env file keeps as part of the value: put the comment on a line of its own")
	}
	return nil
}

// sendableToken says what keeps token v from being sent in an HTTP header: a control
// character (a line end carried over from a CRLF env file or a pasted token), with which
// Go refuses to send the request at all; why says what that breaks. (White space at its
// ends is sent, and dropped by the server that reads it.)
func sendableToken(v, why string) error {
	if strings.ContainsFunc(v, func(r rune) bool { return (r < ' ' && r != '\t') || r == 0x7f }) {
		return errors.New("has a control character, which no HTTP header carries: " + why)
	}
	return nil
}

// ollamaToken accepts FOREMAN_OLLAMA_TOKEN: one that cannot be sent failed every call
// to Ollama before it left, and foreman showed Ollama unreachable for ever.
func ollamaToken(p *string) func(string) error {
	return func(v string) error {
		if err := sendableToken(v, "foreman could not send it to Ollama, which would look unreachable"); err != nil {
			return err
		}
		if err := commentAfterToken(v); err != nil {
			return err
		}
		*p = v
		return nil
	}
}

// readableFile accepts the path of a file foreman can open (it is read at start).
func readableFile(p *string) func(string) error {
	return func(v string) error {
		f, err := os.Open(v)
		if err != nil {
			return fmt.Errorf("cannot read the file: %w", errors.Unwrap(err))
		}
		_ = f.Close()
		*p = v
		return nil
	}
}

// natsURLs accepts what nats.Connect does, a comma-separated list of URLs, the scheme
// (nats://) optional, less the lists ollama.CheckURLList refuses (those NATS would split
// inside a user or password). The message never repeats the value: it may hold a
// password.
func natsURLs(p *string) func(string) error {
	return func(v string) error {
		if err := ollama.CheckURLList(v); err != nil {
			return err
		}
		if strings.Trim(v, ", \t") == "" {
			return errors.New("no NATS URL")
		}
		*p = v
		return nil
	}
}

// Credentials never appear in messages or logs: URLs are shown without the secrets in
// their userinfo, and secret settings not at all.
var (
	secretSettings = map[string]bool{
		"FOREMAN_OLLAMA_TOKEN": true, "FOREMAN_AUTH_TOKEN": true, "FOREMAN_AUTH_TOKENS": true,
		"FOREMAN_NATS_PASSWORD": true, "FOREMAN_WEBHOOK_SECRET": true,
	}
	urlSettings = map[string]bool{"FOREMAN_OLLAMA_URL": true, "FOREMAN_NATS_URL": true}
	// pathSettings name files or directories: white space at either end is a slip of the
	// env file's quoting, never part of the path meant.
	pathSettings = map[string]bool{
		"FOREMAN_DATA_DIR": true, "FOREMAN_NATS_TLS_CERT": true, "FOREMAN_NATS_TLS_KEY": true,
		"FOREMAN_NATS_CREDS": true, "FOREMAN_NATS_NKEY_SEED": true, "FOREMAN_NATS_CA": true,
		"FOREMAN_AUTH_TOKENS_FILE": true,
	}
)

// checkSpace refuses a value of setting env that is only white space (set, but to
// nothing: a default is had by leaving it unset), and white space around a path.
func checkSpace(env, val string) error {
	switch trimmed := strings.TrimSpace(val); {
	case trimmed == "" && val != "":
		return errors.New("only white space: leave it unset for the default")
	case pathSettings[env] && trimmed != val:
		return errors.New("has white space at its start or end")
	}
	return nil
}

// shownValue is the value of the setting env as an error message may quote it.
func shownValue(env, val string) string {
	switch {
	case secretSettings[env]:
		return "(hidden)"
	case holdsSeed(val):
		// A file setting given the secret itself (FOREMAN_NATS_NKEY_SEED, ..._CREDS).
		return "(hidden: an nkey seed itself, not the name of a file holding it)"
	case urlSettings[env]:
		return strconv.Quote(ollama.RedactURLs(val))
	}
	return strconv.Quote(val)
}

// holdsSeed reports whether val holds an nkey seed ("SU…", a creds file's text): the
// secret an operator meant to put in the file a setting names.
func holdsSeed(val string) bool {
	for _, f := range strings.Fields(val) {
		if _, err := nkeys.FromSeed([]byte(f)); err == nil {
			return true
		}
	}
	return false
}

// secretFlagNote ends the usage of a flag that takes a secret: a command line is any
// local user's to read (ps, /proc/<pid>/cmdline), the environment is not.
const secretFlagNote = " (other users of the machine can read a flag; prefer the variable)"

// bindFlags registers every setting as a flag on fs.
func bindFlags(fs *pflag.FlagSet, set []*setting) {
	for _, s := range set {
		usage := s.usage + " [" + s.env + "]"
		if secretSettings[s.env] {
			usage += secretFlagNote
		}
		fs.StringVar(&s.raw, s.flag, s.def, usage)
		if s.noOpt != "" {
			fs.Lookup(s.flag).NoOptDefVal = s.noOpt
		}
	}
}

// resolve fills the config: a flag given on the command line beats the environment, which
// beats the default. Errors name the variable (or flag) and the bad value.
func resolve(fs *pflag.FlagSet, set []*setting, getenv func(string) string) error {
	var errs []error
	for _, s := range set {
		val, source := s.def, s.env
		if v := getenv(s.env); v != "" {
			val = v
		}
		if fs.Changed(s.flag) {
			val, source = s.raw, "--"+s.flag
		}
		if val == "" && s.def == "" {
			continue
		}
		if err := checkSpace(s.env, val); err != nil {
			errs = append(errs, fmt.Errorf("%s=%s: %w", source, shownValue(s.env, val), err))
			continue
		}
		if err := s.parse(val); err != nil {
			errs = append(errs, fmt.Errorf("%s=%s: %w", source, shownValue(s.env, val), err))
		}
	}
	return errors.Join(errs...)
}

func (c *serveConfig) finish() error {
	if c.TargetName == "" {
		// Filled here, not as the flag's default: the help says "the host name" once.
		c.TargetName = app.DefaultTargetName()
	}
	if err := c.finishMaxWait(); err != nil {
		return err
	}
	if c.NATSListen != "" && c.NATSURL != "" {
		return errors.New("FOREMAN_NATS_LISTEN and FOREMAN_NATS_URL exclude each other: an external NATS has its own listeners")
	}
	if err := app.CheckNATSListener(c.Config); err != nil {
		return err
	}
	if (c.NATSUser == "") != (c.NATSPassword == "") {
		return errors.New("FOREMAN_NATS_USER and FOREMAN_NATS_PASSWORD must be set together")
	}
	if c.NATSListen != "" && c.NATSUser == "" && c.NATSNkey == "" {
		return fmt.Errorf("FOREMAN_NATS_LISTEN=%q: a NATS listener needs FOREMAN_NATS_USER and FOREMAN_NATS_PASSWORD, or FOREMAN_NATS_NKEY", c.NATSListen)
	}
	if (c.NATSTLSCert == "") != (c.NATSTLSKey == "") {
		return errors.New("FOREMAN_NATS_TLS_CERT and FOREMAN_NATS_TLS_KEY must be set together")
	}
	if err := app.CheckNATSLogin(c.Config); err != nil {
		return err
	}
	if err := app.CheckPprofAddr(c.Config); err != nil {
		return err
	}
	if err := c.readAuthTokensFile(); err != nil {
		return err
	}
	if c.AuthToken != "" && len(c.AuthTokens) > 0 {
		return errors.New("FOREMAN_AUTH_TOKEN and FOREMAN_AUTH_TOKENS (or FOREMAN_AUTH_TOKENS_FILE) exclude each other: " +
			"give the single token a name among the named ones (e.g. default:<token>)")
	}
	if err := c.checkModelAdmins(); err != nil {
		return err
	}
	if c.AuthToken == "" && len(c.AuthTokens) == 0 && !app.LoopbackAddr(c.Addr) {
		if !c.InsecureNoAuth {
			return fmt.Errorf("FOREMAN_ADDR=%q is not a loopback address and FOREMAN_AUTH_TOKEN is empty: "+
				"anyone who reaches it, any web page included, could use foreman; set FOREMAN_AUTH_TOKEN "+
				"(e.g. openssl rand -hex 32) or named FOREMAN_AUTH_TOKENS, or FOREMAN_INSECURE_NO_AUTH=true to serve it without auth anyway", c.Addr)
		}
	}
	if c.NATSReplicas == 0 { // unset: a set value is positive
		c.NATSReplicas = app.DefaultReplicas(c.NATSURL)
	}
	if c.NATSURL == "" && c.NATSReplicas > 1 {
		return fmt.Errorf("FOREMAN_NATS_REPLICAS=%d: the embedded NATS server is a single node, whose streams have 1 replica; "+
			"more need a NATS cluster (FOREMAN_NATS_URL)", c.NATSReplicas)
	}
	if c.MaxBodyBytesInFlight == 0 { // unset: a set value is positive
		c.MaxBodyBytesInFlight = app.DefaultMaxBodyBytesInFlight(c.MaxBodyBytes)
	}
	if c.MaxBodyBytesInFlight < c.MaxBodyBytes {
		return fmt.Errorf("FOREMAN_MAX_BODY_BYTES_IN_FLIGHT=%d is less than FOREMAN_MAX_BODY=%d: the largest body foreman takes must fit in the bytes it holds at once", c.MaxBodyBytesInFlight, c.MaxBodyBytes)
	}
	return nil
}

// finishMaxWait keeps FOREMAN_MAX_WAIT below the age at which a waiting job is ended
// (broker.StaleAge of FOREMAN_JOB_TTL: 3/4 of it up to an 8m TTL, two minutes short of it above), or aging
// would never come: a waiting job would expire (ADR-0043) before it had waited too long,
// and a starved model's jobs fail instead of running. The default value gives way to half
// that age; another is refused.
func (c *serveConfig) finishMaxWait() error {
	if c.MaxWait <= 0 || c.JobTTL <= 0 {
		return nil
	}
	stale := broker.StaleAge(c.JobTTL)
	if c.MaxWait < stale {
		return nil
	}
	if c.MaxWait == app.DefaultMaxWait {
		c.MaxWait = stale / 2
		return nil
	}
	return fmt.Errorf("FOREMAN_MAX_WAIT=%s must be below %s, the age at which a waiting job expires with FOREMAN_JOB_TTL=%s: "+
		"it would expire before it counts as waiting too long", c.MaxWait, stale, c.JobTTL)
}
