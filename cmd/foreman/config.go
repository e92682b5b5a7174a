package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// serveConfig is everything `foreman serve` is configured with. Each field comes from a
// flag, else from its FOREMAN_* variable, else from its default.
type serveConfig struct {
	Addr              string
	OllamaURL         string
	OllamaToken       string
	AuthToken         string
	DataDir           string
	NATSListen        string
	NATSURL           string
	NATSUser          string
	NATSPassword      string
	NATSNkey          string
	NATSTLSCert       string
	NATSTLSKey        string
	NATSReplicas      int
	PollInterval      time.Duration
	MaxAttempts       int
	AckWait           time.Duration
	JobTTL            time.Duration
	WebhookSecret     string
	WebhookAttempts   int
	EmbedModel        string
	LogLevel          slog.Level
	MaxQueue          int
	MaxConsecutive    int
	MaxWait           time.Duration
	MaxBodyBytes      int64
	ShutdownTimeout   time.Duration
	logLevelName      string
	natsReplicasIsSet bool
}

// setting binds one field to its flag and environment variable.
type setting struct {
	env, flag, def, usage string
	parse                 func(string) error
	raw                   string
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
	return []*setting{
		{env: "FOREMAN_ADDR", flag: "addr", def: "127.0.0.1:8080", usage: "HTTP listen address", parse: hostPort(&c.Addr)},
		{env: "FOREMAN_OLLAMA_URL", flag: "ollama-url", def: "http://127.0.0.1:11434", usage: "URL of the Ollama server foreman fronts", parse: httpURL(&c.OllamaURL)},
		{env: "FOREMAN_OLLAMA_TOKEN", flag: "ollama-token", usage: "bearer token sent to Ollama", parse: str(&c.OllamaToken)},
		{env: "FOREMAN_AUTH_TOKEN", flag: "auth-token", usage: "bearer token HTTP clients must send (off when empty)", parse: str(&c.AuthToken)},
		{env: "FOREMAN_DATA_DIR", flag: "data-dir", usage: "JetStream store directory (default: foreman in the user's data dir)", parse: str(&c.DataDir)},
		{env: "FOREMAN_NATS_LISTEN", flag: "nats-listen", usage: "host:port of a NATS listener for clients (off when empty)", parse: optionalHostPort(&c.NATSListen)},
		{env: "FOREMAN_NATS_URL", flag: "nats-url", usage: "external NATS URL(s); no embedded server when set", parse: str(&c.NATSURL)},
		{env: "FOREMAN_NATS_USER", flag: "nats-user", usage: "client user on the NATS listener", parse: str(&c.NATSUser)},
		{env: "FOREMAN_NATS_PASSWORD", flag: "nats-password", usage: "client password on the NATS listener", parse: str(&c.NATSPassword)},
		{env: "FOREMAN_NATS_NKEY", flag: "nats-nkey", usage: "public user nkey (U…) that may also log in on the NATS listener", parse: str(&c.NATSNkey)},
		{env: "FOREMAN_NATS_TLS_CERT", flag: "nats-tls-cert", usage: "TLS certificate file for the NATS listener", parse: str(&c.NATSTLSCert)},
		{env: "FOREMAN_NATS_TLS_KEY", flag: "nats-tls-key", usage: "TLS key file for the NATS listener", parse: str(&c.NATSTLSKey)},
		{env: "FOREMAN_NATS_REPLICAS", flag: "nats-replicas", usage: "replicas of foreman's streams (default 1 embedded, 3 with FOREMAN_NATS_URL)", parse: func(v string) error {
			c.natsReplicasIsSet = true
			return integer(&c.NATSReplicas)(v)
		}},
		{env: "FOREMAN_POLL_INTERVAL", flag: "poll-interval", def: "30s", usage: "how often the model inventory polls Ollama", parse: dur(&c.PollInterval)},
		{env: "FOREMAN_MAX_ATTEMPTS", flag: "max-attempts", def: "3", usage: "attempts per job on connection errors", parse: integer(&c.MaxAttempts)},
		{env: "FOREMAN_ACK_WAIT", flag: "ack-wait", def: "60s", usage: "how long a job whose foreman died waits before it runs again (with --nats-url; embedded: at once)", parse: dur(&c.AckWait)},
		{env: "FOREMAN_JOB_TTL", flag: "job-ttl", def: "24h", usage: "how long jobs, artifacts and delivery logs are kept", parse: dur(&c.JobTTL)},
		{env: "FOREMAN_WEBHOOK_SECRET", flag: "webhook-secret", usage: "webhook signing secret (whsec_<base64> or raw)", parse: str(&c.WebhookSecret)},
		{env: "FOREMAN_WEBHOOK_ATTEMPTS", flag: "webhook-attempts", def: "5", usage: "delivery attempts per webhook event", parse: integer(&c.WebhookAttempts)},
		{env: "FOREMAN_EMBED_MODEL", flag: "embed-model", usage: "embedding model kept loaded (keep_alive -1)", parse: str(&c.EmbedModel)},
		{env: "FOREMAN_LOG_LEVEL", flag: "log-level", def: "info", usage: "debug, info, warn or error", parse: c.parseLevel},
		{env: "FOREMAN_MAX_QUEUE", flag: "max-queue", def: "1000", usage: "queued jobs before submits get 503", parse: integer(&c.MaxQueue)},
		{env: "FOREMAN_MAX_CONSECUTIVE", flag: "max-consecutive", def: "8", usage: "jobs of one model in a row while others wait", parse: integer(&c.MaxConsecutive)},
		{env: "FOREMAN_MAX_WAIT", flag: "max-wait", def: "2m", usage: "longest a waiting model is passed over", parse: dur(&c.MaxWait)},
		{env: "FOREMAN_MAX_BODY", flag: "max-body", def: "33554432", usage: "largest request body in bytes", parse: func(v string) error {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n <= 0 {
				return errors.New("not a positive number of bytes")
			}
			c.MaxBodyBytes = n
			return nil
		}},
		{env: "FOREMAN_SHUTDOWN_TIMEOUT", flag: "shutdown-timeout", def: "30s", usage: "deadline for a graceful shutdown", parse: dur(&c.ShutdownTimeout)},
	}
}

func (c *serveConfig) parseLevel(v string) error {
	var l slog.Level
	if err := l.UnmarshalText([]byte(v)); err != nil {
		return errors.New("not a log level (debug, info, warn, error)")
	}
	c.LogLevel, c.logLevelName = l, strings.ToLower(v)
	return nil
}

func hostPort(p *string) func(string) error {
	return func(v string) error {
		if _, _, err := net.SplitHostPort(v); err != nil {
			return errors.New("not host:port")
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
			return errors.New("not an absolute http(s) URL")
		}
		*p = strings.TrimRight(v, "/")
		return nil
	}
}

// bindFlags registers every setting as a flag on fs.
func bindFlags(fs *pflag.FlagSet, set []*setting) {
	for _, s := range set {
		usage := s.usage + " [" + s.env + "]"
		fs.StringVar(&s.raw, s.flag, s.def, usage)
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
		if err := s.parse(val); err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: %w", source, val, err))
		}
	}
	return errors.Join(errs...)
}

func (c *serveConfig) finish() error {
	if c.NATSListen != "" && c.NATSURL != "" {
		return errors.New("FOREMAN_NATS_LISTEN and FOREMAN_NATS_URL exclude each other: an external NATS has its own listeners")
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
	if !c.natsReplicasIsSet {
		c.NATSReplicas = 1
		if c.NATSURL != "" {
			c.NATSReplicas = 3
		}
	}
	return nil
}
