package main

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"gitea.stevedudenhoeffer.com/steve/foreman/cmd/foreman/app"
)

// parseConfig resolves a serve configuration from command-line args and an environment.
func parseConfig(t *testing.T, args []string, env map[string]string) (*serveConfig, error) {
	t.Helper()
	cfg := &serveConfig{}
	set := cfg.settings()
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	bindFlags(fs, set)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parse %q: %v", args, err)
	}
	if err := resolve(fs, set, func(k string) string { return env[k] }); err != nil {
		return nil, err
	}
	return cfg, cfg.finish()
}

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	cfg, err := parseConfig(t, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Addr != "127.0.0.1:8080" || cfg.OllamaURL != "http://127.0.0.1:11434" || cfg.PollInterval != 30*time.Second ||
		cfg.MaxAttempts != 3 || cfg.JobTTL != 24*time.Hour || cfg.MaxQueue != 1000 || cfg.MaxConsecutive != 8 ||
		cfg.MaxWait != 2*time.Minute || cfg.NATSReplicas != 1 || cfg.AuthToken != "" || cfg.NATSListen != "" {
		t.Errorf("defaults: %+v", cfg)
	}
}

func TestConfigWebhookPolicy(t *testing.T) {
	t.Parallel()
	cfg, err := parseConfig(t, []string{"--webhook-deny-private=true"}, map[string]string{"FOREMAN_WEBHOOK_ALLOW_NETS": "127.0.0.0/8, ::1/128", "FOREMAN_ADDR": "0.0.0.0:8080", "FOREMAN_AUTH_TOKEN": "t"})
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.WebhookAllowNets) != 2 || cfg.WebhookAllowNets[1].String() != "::1/128" || !cfg.WebhookDenyPrivate {
		t.Errorf("webhook policy settings: %v %v", cfg.WebhookAllowNets, cfg.WebhookDenyPrivate)
	}
	p := app.WebhookPolicy(cfg.Config, "0.0.0.0:8080", "127.0.0.1:4222", "")
	if len(p.Protected) != 3 || p.Protected[0] != "127.0.0.1:11434" || p.Protected[1] != "0.0.0.0:8080" || p.Protected[2] != "127.0.0.1:4222" {
		t.Errorf("protected endpoints %v, want the Ollama target and foreman's own listeners", p.Protected)
	}
	if cfg, _ := parseConfig(t, nil, nil); cfg.WebhookDenyPrivate || cfg.WebhookAllowNets != nil {
		t.Errorf("defaults: deny private %v, allow %v", cfg.WebhookDenyPrivate, cfg.WebhookAllowNets)
	}
}

// A flag beats its variable, which beats the default.
func TestConfigPrecedence(t *testing.T) {
	t.Parallel()
	env := map[string]string{"FOREMAN_POLL_INTERVAL": "5s", "FOREMAN_ADDR": "127.0.0.1:9000", "FOREMAN_AUTH_TOKEN": "from-env"}
	cfg, err := parseConfig(t, nil, env)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.PollInterval != 5*time.Second || cfg.Addr != "127.0.0.1:9000" || cfg.AuthToken != "from-env" {
		t.Errorf("env over default: %+v", cfg)
	}
	cfg, err = parseConfig(t, []string{"--poll-interval=7s", "--auth-token", "from-flag"}, env)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.PollInterval != 7*time.Second || cfg.AuthToken != "from-flag" || cfg.Addr != "127.0.0.1:9000" {
		t.Errorf("flag over env: %+v", cfg)
	}
	cfg, err = parseConfig(t, nil, map[string]string{"FOREMAN_NATS_URL": "nats://a:4222"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.NATSReplicas != 3 {
		t.Errorf("external NATS: replicas %d, want 3", cfg.NATSReplicas)
	}
}

// The bounds themselves are taken.
func TestConfigBoundsAccepted(t *testing.T) {
	t.Parallel()
	cfg, err := parseConfig(t, nil, map[string]string{
		"FOREMAN_JOB_TTL": "1s", "FOREMAN_ACK_WAIT": "1s", "FOREMAN_POLL_INTERVAL": "100ms", "FOREMAN_MAX_ATTEMPTS": "100",
		"FOREMAN_OLLAMA_URL": "http://127.0.0.1:65535/ollama/", // a proxy's prefix is taken
		// A tab within a header's value is carried, as it is sent.
		"FOREMAN_AUTH_TOKEN": "s3c\tret",
	})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.OllamaURL != "http://127.0.0.1:65535/ollama" || cfg.AuthToken != "s3c\tret" {
		t.Errorf("Ollama URL %q, auth token %q", cfg.OllamaURL, cfg.AuthToken)
	}
	if cfg.JobTTL != time.Second || cfg.AckWait != time.Second || cfg.PollInterval != 100*time.Millisecond || cfg.MaxAttempts != 100 {
		t.Errorf("bounds: job TTL %s, ack wait %s, poll interval %s, max attempts %d", cfg.JobTTL, cfg.AckWait, cfg.PollInterval, cfg.MaxAttempts)
	}
	// The default FOREMAN_MAX_WAIT (2m) gives way to so short a job TTL: half the age at
	// which a waiting job expires (3/4 of 1s).
	if cfg.MaxWait != 375*time.Millisecond {
		t.Errorf("max wait %s with a job TTL of 1s, want 375ms", cfg.MaxWait)
	}
}

// Bad values are refused with the variable (or flag) and the value in the message.
func TestConfigBadValues(t *testing.T) {
	t.Parallel()
	cases := []struct {
		args []string
		env  map[string]string
		want []string
	}{
		{env: map[string]string{"FOREMAN_JOB_TTL": "abc"}, want: []string{`FOREMAN_JOB_TTL="abc": not a duration`}},
		{args: []string{"--job-ttl=abc"}, want: []string{`--job-ttl="abc": not a duration`}},
		{env: map[string]string{"FOREMAN_POLL_INTERVAL": "-5s"}, want: []string{`FOREMAN_POLL_INTERVAL="-5s": must be positive`}},
		{env: map[string]string{"FOREMAN_MAX_QUEUE": "lots"}, want: []string{`FOREMAN_MAX_QUEUE="lots": not an integer`}},
		{env: map[string]string{"FOREMAN_MAX_ATTEMPTS": "0"}, want: []string{`FOREMAN_MAX_ATTEMPTS="0": must be positive`}},
		// Values that would fail later, or make no sense, are refused with their bound.
		{env: map[string]string{"FOREMAN_JOB_TTL": "50ms"}, want: []string{`FOREMAN_JOB_TTL="50ms": must be at least 1s`}},
		{env: map[string]string{"FOREMAN_ACK_WAIT": "10ms"}, want: []string{`FOREMAN_ACK_WAIT="10ms": must be at least 1s`}},
		{args: []string{"--poll-interval=1ms"}, want: []string{`--poll-interval="1ms": must be at least 100ms`}},
		{env: map[string]string{"FOREMAN_MAX_ATTEMPTS": "9223372036854775807"}, want: []string{`FOREMAN_MAX_ATTEMPTS="9223372036854775807": must be at most 100`}},
		{env: map[string]string{"FOREMAN_MAX_ATTEMPTS": "101"}, want: []string{`FOREMAN_MAX_ATTEMPTS="101": must be at most 100`}},
		{env: map[string]string{"FOREMAN_JOB_TTL": "1h", "FOREMAN_MAX_WAIT": "2h"}, want: []string{`FOREMAN_MAX_WAIT=2h0m0s must be below 58m0s, the age at which a waiting job expires with FOREMAN_JOB_TTL=1h0m0s`}},
		{env: map[string]string{"FOREMAN_JOB_TTL": "1h", "FOREMAN_MAX_WAIT": "59m"}, want: []string{`FOREMAN_MAX_WAIT=59m0s must be below 58m0s`}},
		{args: []string{"--job-ttl=1m", "--max-wait=50s"}, want: []string{`FOREMAN_MAX_WAIT=50s must be below 45s`}},
		{env: map[string]string{"FOREMAN_ADDR": "8080"}, want: []string{`FOREMAN_ADDR="8080": not host:port`}},
		{env: map[string]string{"FOREMAN_ADDR": "127.0.0.1:65536"}, want: []string{`FOREMAN_ADDR="127.0.0.1:65536": the port is not a number from 0 to 65535`}},
		{args: []string{"--nats-listen", "127.0.0.1:99999"}, want: []string{`--nats-listen="127.0.0.1:99999": the port is not a number from 0 to 65535`}},
		{env: map[string]string{"FOREMAN_NATS_LISTEN": "127.0.0.1:-1"}, want: []string{`FOREMAN_NATS_LISTEN="127.0.0.1:-1": the port is not a number`}},
		{env: map[string]string{"FOREMAN_NATS_LISTEN": "127.0.0.1:nats"}, want: []string{`FOREMAN_NATS_LISTEN="127.0.0.1:nats": the port is not a number`}},
		{env: map[string]string{"FOREMAN_OLLAMA_URL": "ftp://mac:11434"}, want: []string{`FOREMAN_OLLAMA_URL="ftp://mac:11434": not an absolute http(s) URL`}},
		// OLLAMA_HOST's form, host:port without a scheme: the error says what to add.
		{env: map[string]string{"FOREMAN_OLLAMA_URL": "mac.lan:11434"}, want: []string{`FOREMAN_OLLAMA_URL="mac.lan:11434": not an absolute http(s) URL (begin it with http:// or https://)`}},
		{env: map[string]string{"FOREMAN_OLLAMA_URL": "127.0.0.1:11434"}, want: []string{`FOREMAN_OLLAMA_URL="127.0.0.1:11434": not an absolute http(s) URL (begin it with http:// or https://)`}},
		// A port no connection can reach: refused at start, not a poll that fails for ever.
		{env: map[string]string{"FOREMAN_OLLAMA_URL": "http://127.0.0.1:99999"}, want: []string{`FOREMAN_OLLAMA_URL="http://127.0.0.1:99999": the port is not a number from 1 to 65535`}},
		{env: map[string]string{"FOREMAN_OLLAMA_URL": "http://127.0.0.1:0"}, want: []string{`FOREMAN_OLLAMA_URL="http://127.0.0.1:0": the port is not a number from 1 to 65535`}},
		{env: map[string]string{"FOREMAN_OLLAMA_URL": "http://127.0.0.1:65536"}, want: []string{`FOREMAN_OLLAMA_URL="http://127.0.0.1:65536": the port is not a number from 1 to 65535`}},
		// An API path given as the server's: every route would be called under it (/api/api/chat).
		{env: map[string]string{"FOREMAN_OLLAMA_URL": "http://mac.lan:11434/api"}, want: []string{`FOREMAN_OLLAMA_URL="http://mac.lan:11434/api": the path ends in /api: give the server's own URL`}},
		{env: map[string]string{"FOREMAN_OLLAMA_URL": "http://mac.lan:11434/v1/"}, want: []string{`FOREMAN_OLLAMA_URL="http://mac.lan:11434/v1/": the path ends in /v1: give the server's own URL`}},
		// A token no HTTP header can carry (a header's value loses the white space around
		// it) would answer every request 401: refused, never quoted.
		{env: map[string]string{"FOREMAN_AUTH_TOKEN": "s3cret "}, want: []string{`FOREMAN_AUTH_TOKEN=(hidden): has white space at its start or end`}},
		{env: map[string]string{"FOREMAN_AUTH_TOKEN": "\ts3cret"}, want: []string{`FOREMAN_AUTH_TOKEN=(hidden): has white space at its start or end`}},
		{env: map[string]string{"FOREMAN_AUTH_TOKEN": " "}, want: []string{`FOREMAN_AUTH_TOKEN=(hidden): only white space`}},
		{args: []string{"--auth-token", "s3c\x01ret"}, want: []string{`--auth-token=(hidden): has a control character`}},
		// A comment after the token in foreman.env, which systemd's EnvironmentFile keeps as
		// part of the value: every caller sending the token alone got 401.
		{env: map[string]string{"FOREMAN_AUTH_TOKEN": "s3cret  # rotated in May"}, want: []string{`FOREMAN_AUTH_TOKEN=(hidden): is followed by a comment`}},
		{env: map[string]string{"FOREMAN_OLLAMA_TOKEN": "s3cret\t#proxy"}, want: []string{`FOREMAN_OLLAMA_TOKEN=(hidden): is followed by a comment`}},
		{args: []string{"--auth-token", "s3c\x7fret"}, want: []string{`--auth-token=(hidden): has a control character`}},
		// So is a token for Ollama (a line end carried over from a CRLF env file): every call
		// to Ollama failed, foreman saw it unreachable for ever, the setting unnamed.
		{env: map[string]string{"FOREMAN_OLLAMA_TOKEN": "s3cret\r"}, want: []string{`FOREMAN_OLLAMA_TOKEN=(hidden): has a control character`}},
		{args: []string{"--ollama-token", "s3c\nret"}, want: []string{`--ollama-token=(hidden): has a control character`}},
		{env: map[string]string{"FOREMAN_LOG_LEVEL": "loud"}, want: []string{`FOREMAN_LOG_LEVEL="loud": not a log level`}},
		{env: map[string]string{"FOREMAN_MAX_BODY": "1e9"}, want: []string{`FOREMAN_MAX_BODY="1e9"`}},
		{env: map[string]string{"FOREMAN_ORIGINS": "https://a.example,b.example"}, want: []string{`FOREMAN_ORIGINS="https://a.example,b.example": "b.example": not an origin`}},
		{env: map[string]string{"FOREMAN_INSECURE_NO_AUTH": "yes please"}, want: []string{`FOREMAN_INSECURE_NO_AUTH="yes please": not true or false`}},
		{env: map[string]string{"FOREMAN_BODY_READ_TIMEOUT": "0s"}, want: []string{`FOREMAN_BODY_READ_TIMEOUT="0s": must be positive`}},
		{env: map[string]string{"FOREMAN_WRITE_TIMEOUT": "soon"}, want: []string{`FOREMAN_WRITE_TIMEOUT="soon": not a duration`}},
		{env: map[string]string{"FOREMAN_STREAM_BUFFER": "8MiB"}, want: []string{`FOREMAN_STREAM_BUFFER="8MiB": not a positive number of bytes`}},
		{env: map[string]string{"FOREMAN_WEBHOOK_ALLOW_NETS": "127.0.0.0/8,localhost"}, want: []string{`FOREMAN_WEBHOOK_ALLOW_NETS="127.0.0.0/8,localhost": "localhost" is not a CIDR`}},
		{args: []string{"--webhook-deny-private=yes"}, want: []string{`--webhook-deny-private="yes": not true or false`}},
		// A list of nothing is no NATS to connect to (unset is the embedded one).
		{env: map[string]string{"FOREMAN_NATS_URL": ","}, want: []string{`FOREMAN_NATS_URL=",": no NATS URL`}},
		{env: map[string]string{"FOREMAN_NATS_URL": " , "}, want: []string{`FOREMAN_NATS_URL=" , ": no NATS URL`}},
		{env: map[string]string{"FOREMAN_NATS_URL": "http://127.0.0.1:4222"}, want: []string{`FOREMAN_NATS_URL="http://127.0.0.1:4222": entry 1 is not a NATS URL: its scheme is none of`}},
		// Set to white space only: a directory named " " in the working directory, a
		// target named " ", before. A path keeps no white space at its ends.
		{env: map[string]string{"FOREMAN_DATA_DIR": " "}, want: []string{`FOREMAN_DATA_DIR=" ": only white space: leave it unset for the default`}},
		{args: []string{"--target-name", "\t"}, want: []string{`--target-name="\t": only white space`}},
		{env: map[string]string{"FOREMAN_LOG_LEVEL": " "}, want: []string{`FOREMAN_LOG_LEVEL=" ": only white space`}},
		{env: map[string]string{"FOREMAN_DATA_DIR": "/var/lib/foreman "}, want: []string{`FOREMAN_DATA_DIR="/var/lib/foreman ": has white space at its start or end`}},
		{env: map[string]string{"FOREMAN_NATS_TLS_CERT": " cert.pem", "FOREMAN_NATS_TLS_KEY": "key.pem"}, want: []string{`FOREMAN_NATS_TLS_CERT=" cert.pem": has white space`}},
		// Every bad value is reported, not only the first.
		{env: map[string]string{"FOREMAN_JOB_TTL": "abc", "FOREMAN_MAX_WAIT": "soon"}, want: []string{`FOREMAN_JOB_TTL="abc"`, `FOREMAN_MAX_WAIT="soon"`}},
	}
	for _, c := range cases {
		_, err := parseConfig(t, c.args, c.env)
		if err == nil {
			t.Errorf("args %q env %v: accepted", c.args, c.env)
			continue
		}
		if strings.Contains(err.Error(), "s3c") {
			t.Errorf("args %q env %v: error %q quotes a secret", c.args, c.env, err)
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("args %q env %v: error %q does not contain %q", c.args, c.env, err, w)
			}
		}
	}
}

func TestConfigNATSCombinations(t *testing.T) {
	t.Parallel()
	cases := []struct {
		env  map[string]string
		want string // "" = accepted
	}{
		{map[string]string{"FOREMAN_NATS_LISTEN": "127.0.0.1:4222"}, `FOREMAN_NATS_LISTEN="127.0.0.1:4222": a NATS listener needs FOREMAN_NATS_USER and FOREMAN_NATS_PASSWORD`},
		{map[string]string{"FOREMAN_NATS_LISTEN": "127.0.0.1:4222", "FOREMAN_NATS_USER": "u"}, "FOREMAN_NATS_PASSWORD"},
		{map[string]string{"FOREMAN_NATS_LISTEN": "127.0.0.1:4222", "FOREMAN_NATS_USER": "u", "FOREMAN_NATS_PASSWORD": "p"}, ""},
		{map[string]string{"FOREMAN_NATS_LISTEN": "127.0.0.1:4222", "FOREMAN_NATS_URL": "nats://x:4222"}, "exclude each other"},
		{map[string]string{"FOREMAN_NATS_LISTEN": "127.0.0.1:4222", "FOREMAN_NATS_USER": "u", "FOREMAN_NATS_PASSWORD": "p", "FOREMAN_NATS_TLS_CERT": "c.pem"}, "must be set together"},
		// The listener's settings do nothing without the listener, nor with an external NATS.
		// Not the user and password: the CLI logs in with them, and its shell may run serve.
		{map[string]string{"FOREMAN_NATS_USER": "u", "FOREMAN_NATS_PASSWORD": "p"}, ""},
		{map[string]string{"FOREMAN_NATS_NKEY": "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4"}, "FOREMAN_NATS_NKEY needs FOREMAN_NATS_LISTEN"},
		{map[string]string{"FOREMAN_NATS_TLS_CERT": "c.pem", "FOREMAN_NATS_TLS_KEY": "k.pem"}, "FOREMAN_NATS_TLS_CERT needs FOREMAN_NATS_LISTEN"},
		{map[string]string{"FOREMAN_NATS_URL": "nats://x:4222", "FOREMAN_NATS_NKEY": "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4"}, "FOREMAN_NATS_NKEY is a setting of the embedded server's NATS listener, and with FOREMAN_NATS_URL none runs"},
		{map[string]string{"FOREMAN_NATS_URL": "nats://x:4222", "FOREMAN_NATS_TLS_KEY": "k.pem"}, "FOREMAN_NATS_TLS_KEY is a setting of the embedded server's NATS listener"},
		{map[string]string{"FOREMAN_NATS_LISTEN": "nope"}, `FOREMAN_NATS_LISTEN="nope": not host:port`},
		// The embedded server is one node: its streams cannot have more than 1 replica.
		{map[string]string{"FOREMAN_NATS_REPLICAS": "3"}, `FOREMAN_NATS_REPLICAS=3: the embedded NATS server is a single node`},
		{map[string]string{"FOREMAN_NATS_REPLICAS": "1"}, ""},
		{map[string]string{"FOREMAN_NATS_REPLICAS": "3", "FOREMAN_NATS_URL": "nats://x:4222"}, ""},
		// Logging in to an external cluster.
		{map[string]string{"FOREMAN_NATS_CREDS": "/no/such.creds", "FOREMAN_NATS_URL": "nats://x:4222"}, `FOREMAN_NATS_CREDS="/no/such.creds": cannot read the file`},
		{map[string]string{"FOREMAN_NATS_NKEY_SEED": "/no/such.nk", "FOREMAN_NATS_URL": "nats://x:4222"}, `FOREMAN_NATS_NKEY_SEED="/no/such.nk": cannot read the file`},
		{map[string]string{"FOREMAN_NATS_CA": "/no/ca.pem", "FOREMAN_NATS_URL": "nats://x:4222"}, `FOREMAN_NATS_CA="/no/ca.pem": cannot read the file`},
		{map[string]string{"FOREMAN_NATS_CA": "config_test.go"}, "needs FOREMAN_NATS_URL"},
		{map[string]string{"FOREMAN_NATS_CREDS": "config_test.go", "FOREMAN_NATS_NKEY_SEED": "config.go", "FOREMAN_NATS_URL": "nats://x:4222"}, "exclude each other"},
		{map[string]string{"FOREMAN_NATS_CREDS": "config_test.go", "FOREMAN_NATS_CA": "config.go", "FOREMAN_NATS_URL": "nats://x:4222"}, ""},
	}
	for _, c := range cases {
		_, err := parseConfig(t, nil, c.env)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%v: %v", c.env, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%v: error %v, want one containing %q", c.env, err, c.want)
		}
	}
}

// The CLI reports a bad configuration on stderr and exits 1 without starting anything.
func TestServeRefusesBadConfig(t *testing.T) {
	t.Parallel()
	var stdout, stderr bytes.Buffer
	env := map[string]string{"FOREMAN_JOB_TTL": "abc", "FOREMAN_DATA_DIR": t.TempDir()}
	code := execute([]string{"serve"}, strings.NewReader(""), &stdout, &stderr, func(k string) string { return env[k] })
	if code != 1 || !strings.Contains(stderr.String(), `FOREMAN_JOB_TTL="abc": not a duration`) {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
}

// The limits on a silent or slow target (ADR-0026): defaults, overrides, bad values.
func TestConfigTargetLimits(t *testing.T) {
	t.Parallel()
	cfg, err := parseConfig(t, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.FirstByteTimeout != 5*time.Minute || cfg.StreamIdleTimeout != 2*time.Minute || cfg.MaxJobTime != 0 || cfg.NonStreamTimeout != 30*time.Minute {
		t.Errorf("defaults: first byte %s, idle %s, max job time %s, non-stream %s", cfg.FirstByteTimeout, cfg.StreamIdleTimeout, cfg.MaxJobTime, cfg.NonStreamTimeout)
	}
	env := map[string]string{"FOREMAN_FIRST_BYTE_TIMEOUT": "10m", "FOREMAN_STREAM_IDLE_TIMEOUT": "30s", "FOREMAN_MAX_JOB_TIME": "1h"}
	cfg, err = parseConfig(t, []string{"--stream-idle-timeout=45s"}, env)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.FirstByteTimeout != 10*time.Minute || cfg.StreamIdleTimeout != 45*time.Second || cfg.MaxJobTime != time.Hour {
		t.Errorf("set: first byte %s, idle %s, max job time %s", cfg.FirstByteTimeout, cfg.StreamIdleTimeout, cfg.MaxJobTime)
	}
	for _, c := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{env: map[string]string{"FOREMAN_FIRST_BYTE_TIMEOUT": "forever"}, want: `FOREMAN_FIRST_BYTE_TIMEOUT="forever": not a duration`},
		{env: map[string]string{"FOREMAN_STREAM_IDLE_TIMEOUT": "0s"}, want: `FOREMAN_STREAM_IDLE_TIMEOUT="0s": must be positive`},
		{env: map[string]string{"FOREMAN_MAX_JOB_TIME": "-1h"}, want: `FOREMAN_MAX_JOB_TIME="-1h": must be positive`},
		{args: []string{"--max-job-time=soon"}, want: `--max-job-time="soon": not a duration`},
		{env: map[string]string{"FOREMAN_NONSTREAM_TIMEOUT": "0"}, want: `FOREMAN_NONSTREAM_TIMEOUT="0": must be positive`},
		{args: []string{"--nonstream-timeout=long"}, want: `--nonstream-timeout="long": not a duration`},
	} {
		_, err := parseConfig(t, c.args, c.env)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("args %q env %v: error %v, want one containing %q", c.args, c.env, err, c.want)
		}
	}
}

// A listener beyond loopback needs a token, unless the operator says in so many words
// that it may go without.
func TestConfigNonLoopbackNeedsToken(t *testing.T) {
	t.Parallel()
	cases := []struct {
		args []string
		env  map[string]string
		ok   bool
	}{
		{env: map[string]string{"FOREMAN_ADDR": "0.0.0.0:8080"}},
		{env: map[string]string{"FOREMAN_ADDR": ":8080"}},
		{env: map[string]string{"FOREMAN_ADDR": "[::]:8080"}},
		{env: map[string]string{"FOREMAN_ADDR": "192.168.1.5:8080"}},
		{env: map[string]string{"FOREMAN_ADDR": "mac.example:8080"}},
		{env: map[string]string{"FOREMAN_ADDR": "0.0.0.0:8080", "FOREMAN_INSECURE_NO_AUTH": "false"}},
		{env: map[string]string{"FOREMAN_ADDR": "0.0.0.0:8080", "FOREMAN_AUTH_TOKEN": "s3cret"}, ok: true},
		{env: map[string]string{"FOREMAN_ADDR": "0.0.0.0:8080", "FOREMAN_INSECURE_NO_AUTH": "true"}, ok: true},
		{args: []string{"--insecure-no-auth"}, env: map[string]string{"FOREMAN_ADDR": "0.0.0.0:8080"}, ok: true},
		{args: []string{"--insecure-no-auth=false"}, env: map[string]string{"FOREMAN_ADDR": "0.0.0.0:8080", "FOREMAN_INSECURE_NO_AUTH": "true"}},
		{env: map[string]string{"FOREMAN_ADDR": "127.0.0.1:8080"}, ok: true},
		{env: map[string]string{"FOREMAN_ADDR": "127.8.0.1:8080"}, ok: true},
		{env: map[string]string{"FOREMAN_ADDR": "localhost:8080"}, ok: true},
		{env: map[string]string{"FOREMAN_ADDR": "[::1]:8080"}, ok: true},
	}
	for _, c := range cases {
		_, err := parseConfig(t, c.args, c.env)
		switch {
		case c.ok && err != nil:
			t.Errorf("%q %v: %v", c.args, c.env, err)
		case !c.ok && (err == nil || !strings.Contains(err.Error(), "FOREMAN_AUTH_TOKEN") || !strings.Contains(err.Error(), "FOREMAN_INSECURE_NO_AUTH=true")):
			t.Errorf("%q %v: error %v, want a refusal naming FOREMAN_AUTH_TOKEN and FOREMAN_INSECURE_NO_AUTH", c.args, c.env, err)
		}
	}
}

// serve refuses 0.0.0.0 without a token before it binds anything.
func TestServeRefusesPublicAddrWithoutToken(t *testing.T) {
	t.Parallel()
	var stdout, stderr bytes.Buffer
	env := map[string]string{"FOREMAN_ADDR": "0.0.0.0:0", "FOREMAN_DATA_DIR": t.TempDir()}
	code := execute([]string{"serve"}, strings.NewReader(""), &stdout, &stderr, func(k string) string { return env[k] })
	if code != 1 || !strings.Contains(stderr.String(), `FOREMAN_ADDR="0.0.0.0:0" is not a loopback address and FOREMAN_AUTH_TOKEN is empty`) {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
}

func TestConfigBrowserAndSlowClientSettings(t *testing.T) {
	t.Parallel()
	cfg, err := parseConfig(t, []string{"--origins", "https://a.example, chrome-extension://*"}, map[string]string{
		"FOREMAN_BODY_READ_TIMEOUT": "5s", "FOREMAN_WRITE_TIMEOUT": "7s", "FOREMAN_STREAM_BUFFER": "1048576",
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Origins) != 2 || cfg.Origins[1] != "chrome-extension://*" || cfg.BodyReadTimeout != 5*time.Second ||
		cfg.WriteTimeout != 7*time.Second || cfg.StreamBuffer != 1<<20 || cfg.InsecureNoAuth {
		t.Errorf("%+v", cfg)
	}
	cfg, err = parseConfig(t, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Origins != nil || cfg.BodyReadTimeout != time.Minute || cfg.WriteTimeout != 30*time.Second || cfg.StreamBuffer != 8<<20 {
		t.Errorf("defaults: %+v", cfg)
	}
}

// The defaults serve's flags show are app's: resolving no setting at all gives the
// configuration app.Start would fill in by itself.
func TestConfigDefaultsAreApps(t *testing.T) {
	t.Parallel()
	cfg, err := parseConfig(t, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := (app.Config{}).WithDefaults(); !reflect.DeepEqual(cfg.Config, want) {
		t.Errorf("serve's defaults\n%+v\napp's defaults\n%+v", cfg.Config, want)
	}
}

// FOREMAN_PPROF_ADDR is off unless set, and refused off loopback: no token guards it.
func TestConfigPprofAddr(t *testing.T) {
	t.Parallel()
	if cfg, err := parseConfig(t, nil, nil); err != nil || cfg.PprofAddr != "" {
		t.Errorf("default: %q %v, want off", cfg.PprofAddr, err)
	}
	if cfg, err := parseConfig(t, []string{"--pprof-addr", "127.0.0.1:6060"}, nil); err != nil || cfg.PprofAddr != "127.0.0.1:6060" {
		t.Errorf("--pprof-addr 127.0.0.1:6060: %q %v", cfg.PprofAddr, err)
	}
	for _, v := range []string{"0.0.0.0:6060", "192.168.1.5:6060", "6060"} {
		_, err := parseConfig(t, nil, map[string]string{"FOREMAN_PPROF_ADDR": v, "FOREMAN_AUTH_TOKEN": "t"})
		if err == nil || !strings.Contains(err.Error(), "FOREMAN_PPROF_ADDR") {
			t.Errorf("FOREMAN_PPROF_ADDR=%s: %v, want a refusal naming it", v, err)
		}
	}
}
