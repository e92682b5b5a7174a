package app

import (
	"math"
	"net/netip"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/gateway"
	"gitea.stevedudenhoeffer.com/steve/foreman/gateway/webhook"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// Config is what foreman runs with: the settings of `foreman serve` (each field is the
// FOREMAN_* variable or flag of the same name, see the README), with the defaults below
// for fields left zero.
type Config struct {
	Addr        string
	OllamaURL   string
	OllamaToken string
	// TargetName names this foreman's target among those sharing the NATS (ADR-0029);
	// default the host name.
	TargetName   string
	AuthToken    string
	DataDir      string // "" = foreman in the user's data dir
	NATSListen   string
	NATSURL      string // set: an external NATS, no embedded server
	NATSUser     string
	NATSPassword string
	NATSNkey     string
	NATSTLSCert  string
	NATSTLSKey   string
	NATSReplicas int // 0 = DefaultReplicas(NATSURL)
	// Logging in to an external NATS (NATSURL only): a .creds file, a file with a user
	// nkey seed, and a PEM file of the CA of the servers' TLS certificates.
	NATSCreds    string
	NATSNkeySeed string
	NATSCA       string
	PollInterval time.Duration
	MaxAttempts  int
	AckWait      time.Duration
	JobTTL       time.Duration
	// WebhookSecret signs webhooks ("" = unsigned).
	WebhookSecret   string
	WebhookAttempts int
	EmbedModel      string
	MaxQueue        int
	MaxConsecutive  int
	MaxWait         time.Duration
	MaxBodyBytes    int64
	// MaxBodyBytesInFlight bounds the request body bytes held at once (ADR-0048);
	// 0 = DefaultMaxBodyBytesInFlight(MaxBodyBytes).
	MaxBodyBytesInFlight int64
	// PprofAddr is the loopback host:port of the runtime profiles' listener ("" = none).
	PprofAddr string
	// ShutdownTimeout is the deadline serve gives Shutdown.
	ShutdownTimeout time.Duration

	// Limits on a silent or slow target (ADR-0026); MaxJobTime 0 = none.
	FirstByteTimeout  time.Duration
	StreamIdleTimeout time.Duration
	MaxJobTime        time.Duration
	NonStreamTimeout  time.Duration
	// Browser policy (ADR-0023) and slow clients.
	Origins         []string
	InsecureNoAuth  bool
	BodyReadTimeout time.Duration
	WriteTimeout    time.Duration
	StreamBuffer    int64
	// SyncOutageWait bounds a sync call's wait for an unreachable target (ADR-0046).
	SyncOutageWait time.Duration
	// Webhook network policy (ADR-0021).
	WebhookAllowNets   []netip.Prefix
	WebhookDenyPrivate bool
	// Priority classes and programs: named tokens (FOREMAN_AUTH_TOKENS and those read from
	// FOREMAN_AUTH_TOKENS_FILE at start), the per-program limit (0 = none) and the default
	// priorities of sync calls and of /jobs and NATS submits.
	AuthTokens         []gateway.NamedToken
	AuthTokensFile     string
	ModelAdmins        []string // programs of named tokens that may change the models (ADR-0124); empty: all
	MaxQueuePerProgram int
	SyncPriority       broker.Priority
	JobsPriority       broker.Priority

	// Components adjusts the parts Start builds beyond the settings; serve leaves it zero.
	Components Components
}

// Components adjusts what Start builds in ways no setting offers: tests shorten the
// worker's and the dispatcher's delays, or leave the NATS submit responder out.
type Components struct {
	// Store, Worker and Webhooks, when set, adjust the store's, the worker's and the
	// webhook dispatcher's Config after Start filled it in.
	Store    func(*broker.Config)
	Worker   func(*worker.Config)
	Webhooks func(*webhook.Config)
	// NoNATSSubmit leaves foreman.jobs.submit without foreman's responder.
	NoNATSSubmit bool
	// MaxConns, when set, replaces the cap on HTTP connections at once (MaxQueue +
	// spareConns); one remote address's share is half of it.
	MaxConns int
}

// Defaults of the settings: serve shows them as its flags' defaults, and Start fills a
// zero field with them.
const (
	DefaultAddr              = "127.0.0.1:8080"
	DefaultOllamaURL         = "http://127.0.0.1:11434"
	DefaultPollInterval      = 30 * time.Second
	DefaultMaxAttempts       = 3
	DefaultAckWait           = 60 * time.Second
	DefaultJobTTL            = 24 * time.Hour
	DefaultWebhookAttempts   = webhook.DefaultAttempts
	DefaultMaxQueue          = 1000
	DefaultMaxConsecutive    = 8
	DefaultMaxWait           = 2 * time.Minute
	DefaultMaxBodyBytes      = 32 << 20
	DefaultShutdownTimeout   = 30 * time.Second
	DefaultFirstByteTimeout  = worker.DefaultFirstByteTimeout
	DefaultStreamIdleTimeout = worker.DefaultStreamIdleTimeout
	DefaultNonStreamTimeout  = worker.DefaultNonStreamTimeout
	DefaultBodyReadTimeout   = 60 * time.Second
	DefaultWriteTimeout      = 30 * time.Second
	DefaultStreamBuffer      = 8 << 20
	DefaultSyncOutageWait    = gateway.DefaultSyncOutageWait
	DefaultSyncPriority      = broker.PriorityHigh
	DefaultJobsPriority      = broker.PriorityNormal
)

// DefaultMaxBodyBytesInFlight is the budget of request bodies in flight when none is
// set: four of the largest bodies (128 MiB at the default body limit). The embedded
// server queues at most 128 MiB of writes to one stream, and a large body is written
// to the object store's stream while its request holds it: a budget at that size keeps
// concurrent bodies from overflowing that queue at the defaults (ADR-0048).
func DefaultMaxBodyBytesInFlight(maxBodyBytes int64) int64 {
	if maxBodyBytes > math.MaxInt64/4 {
		return math.MaxInt64 // four times a body limit that large would wrap
	}
	return 4 * maxBodyBytes
}

// DefaultReplicas is the replica count of foreman's streams when none is set: 1 on the
// embedded server, 3 on an external NATS (natsURL set), which is a cluster.
func DefaultReplicas(natsURL string) int {
	if natsURL != "" {
		return 3
	}
	return 1
}

// WithDefaults returns c with every zero setting that has a default set to it.
func (c Config) WithDefaults() Config {
	setDefault(&c.Addr, DefaultAddr)
	setDefault(&c.OllamaURL, DefaultOllamaURL)
	if c.TargetName == "" {
		c.TargetName = DefaultTargetName()
	}
	setDefault(&c.NATSReplicas, DefaultReplicas(c.NATSURL))
	setDefault(&c.PollInterval, DefaultPollInterval)
	setDefault(&c.MaxAttempts, DefaultMaxAttempts)
	setDefault(&c.AckWait, DefaultAckWait)
	setDefault(&c.JobTTL, DefaultJobTTL)
	setDefault(&c.WebhookAttempts, DefaultWebhookAttempts)
	setDefault(&c.MaxQueue, DefaultMaxQueue)
	setDefault(&c.MaxConsecutive, DefaultMaxConsecutive)
	setDefault(&c.MaxWait, DefaultMaxWait)
	setDefault(&c.MaxBodyBytes, DefaultMaxBodyBytes)
	setDefault(&c.MaxBodyBytesInFlight, DefaultMaxBodyBytesInFlight(c.MaxBodyBytes))
	setDefault(&c.ShutdownTimeout, DefaultShutdownTimeout)
	setDefault(&c.FirstByteTimeout, DefaultFirstByteTimeout)
	setDefault(&c.StreamIdleTimeout, DefaultStreamIdleTimeout)
	setDefault(&c.NonStreamTimeout, DefaultNonStreamTimeout)
	setDefault(&c.BodyReadTimeout, DefaultBodyReadTimeout)
	setDefault(&c.WriteTimeout, DefaultWriteTimeout)
	setDefault(&c.StreamBuffer, DefaultStreamBuffer)
	setDefault(&c.SyncOutageWait, DefaultSyncOutageWait)
	setDefault(&c.SyncPriority, DefaultSyncPriority)
	setDefault(&c.JobsPriority, DefaultJobsPriority)
	return c
}

func setDefault[T comparable](p *T, def T) {
	var zero T
	if *p == zero {
		*p = def
	}
}
