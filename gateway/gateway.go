// Package gateway is foreman's HTTP face: the Ollama-compatible routes (some passed
// straight to the target, chat and generate queued as jobs), the OpenAI-compatible /v1
// routes, the async /jobs API, /healthz and auth. Every error reaches the client as
// {"error": "..."} (OpenAI-shaped on /v1) with its status chosen in exactly one place:
// statusOf in errors.go maps the gateway's refusals (sentinels such as ErrInvalid or
// ErrProgramLimit, wrapped in *Error), the store's and the target's errors and a sync
// job's outcome (*broker.JobError) to a status, over HTTP and NATS alike. It speaks no
// NATS itself: a sync job's answer comes as broker.JobFeed events, which a syncResponse
// writes to the client (status, headers, deadlines, the cut-off of a slow client).
package gateway

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/failurelog"
	"gitea.stevedudenhoeffer.com/steve/foreman/gateway/webhook"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// Config builds a Server.
type Config struct {
	// Store is the job store. Required.
	Store *broker.Store
	// Target is the Ollama client. Required.
	Target ollama.Client
	// TargetURL is shown by /healthz, with any userinfo redacted (ollama.RedactURL).
	TargetURL string
	// Inventory is the model inventory. Required.
	Inventory *ollama.Inventory
	// TargetName is the name this foreman publishes its target under (broker.Target).
	TargetName string
	// TargetClient, when set, returns a client for another foreman's target (its
	// published URL): routes that name a model the own target lacks go there, and
	// submits for a model only another target has are accepted (ADR-0029). Nil keeps
	// every route on the own target.
	TargetClient func(url string) (ollama.Client, error)
	// OwnModelsOnly says the worker runs only models the own target lists (a shared NATS,
	// ADR-0029): a job for a model no target lists would never run here.
	OwnModelsOnly bool
	// AuthToken, when set, is the bearer token every route but /healthz requires.
	AuthToken string
	// AuthTokens are named bearer tokens (excluding AuthToken): each is accepted, and its
	// name is the program of every request carrying it, whatever the request claims.
	AuthTokens []NamedToken
	// ModelAdmins, when set, are the programs of named tokens (AuthTokens) that may change
	// the target's models: pull, push, create, copy, delete, the model aliases and blob
	// uploads (ADR-0124). Other tokens get 403 there; reading the models stays open to
	// all. Empty: every accepted token may, as every caller of Ollama's own port may.
	ModelAdmins []string
	// MaxQueuePerProgram caps the jobs one program may have in the queue (429 beyond);
	// 0 caps only the whole queue (the store's MaxQueue, 503).
	MaxQueuePerProgram int
	// SyncPriority is the priority of Ollama/OpenAI chat and generate calls without
	// X-Foreman-Priority; default high (a caller waits on the connection).
	SyncPriority broker.Priority
	// JobsPriority is the priority of /jobs and NATS submits that name none; default normal.
	JobsPriority broker.Priority
	// MaxBodyBytes caps request bodies; default 32 MiB.
	MaxBodyBytes int64
	// MaxBodyBytesInFlight caps the bytes of request bodies held at once, all requests
	// together (ADR-0048); a body that would pass it gets 503, unless it is the only one
	// held. Default 4 × MaxBodyBytes.
	MaxBodyBytesInFlight int64
	// RetryAfter is the Retry-After sent with a 503 or 429 refusal ("queue full", bodies
	// in flight over their budget, a program over its limit); default 5s.
	RetryAfter time.Duration
	// WebhookPolicy checks state_webhook_url at submit (ADR-0021); the zero value is the
	// default policy. Give it the dispatcher's policy.
	WebhookPolicy webhook.Policy
	// NATSHealth reports the NATS server's health for /healthz; optional.
	NATSHealth func() error
	// TargetHealth reports what the worker learned of the target that the inventory's
	// polls cannot see (a runner that stalled mid-job) for /healthz; optional.
	TargetHealth func() error
	// Queue orders the waiting jobs for GET /queue and the position and ETA of
	// GET /jobs/{id}: the worker. Without it GET /queue answers 503 and jobs show no
	// position.
	Queue  QueueViewer
	Logger *slog.Logger

	// ListenAddr is the address the HTTP listener is bound to (host:port). On a loopback
	// address every request must name this machine in its Host header (DNS rebinding);
	// empty skips that check.
	ListenAddr string
	// Origins are browser origins allowed besides Ollama's defaults (localhost and
	// friends); a request with another Origin gets 403. "*" allows every origin.
	Origins []string
	// BodyReadTimeout bounds reading a request body once the handler asks for it; a
	// client that sends it slower gets 408. A blob upload, which may take as long as it
	// needs, gets 408 once none of it has come for that long. Default 60s.
	BodyReadTimeout time.Duration
	// WriteTimeout is how long one write of an answer may make no progress before the
	// client is cut off (a queued answer's job runs on). Default 30s.
	WriteTimeout time.Duration
	// StreamBuffer caps the bytes of one queued answer held for a client that reads
	// slower than the target writes; past it the client is cut off (the job runs on).
	// Default 8 MiB; one message is always accepted.
	StreamBuffer int64
	// SyncOutageWait is how long a sync call's job waits while no reachable target can
	// run it (the worker paused for its unreachable target) before it is canceled and the
	// caller gets 502; a call arriving when such an outage has lasted that long is
	// refused at once. Default 1m (ADR-0046).
	SyncOutageWait time.Duration

	// outageProbe and outageFresh replace the outage checks' bounds (outage.go) in tests;
	// bodyWait, the longest one read of a pass-through answer's body waits in an outage
	// (SyncOutageWait).
	outageProbe, outageFresh, bodyWait time.Duration
	// submitWait and natsSubmitWait replace submitTimeout and natsSubmitTimeout, the
	// bounds of one POST /jobs and one NATS submit, in tests.
	submitWait, natsSubmitWait time.Duration
	// metadataMax replaces ollama.MaxMetadataBody, the most of a model list read whole
	// from the target (/v1/models), in tests.
	metadataMax int64
	// artifactReads replaces maxArtifactReads, the artifact bodies sent at once, in tests.
	artifactReads int
	// listResults replaces maxListResults, the bytes of results one GET /jobs page
	// holds, in tests.
	listResults int
	// capsMax replaces maxCapsEntries, the models' capabilities remembered before those
	// of models the target lists no more are dropped, in tests.
	capsMax int
	// writeCut, when set (tests only), is told of an answer's first failed write or
	// flush (its client cut off by WriteTimeout, or gone).
	writeCut func(err error)
}

func (c *Config) setDefaults() {
	if c.MaxBodyBytes <= 0 {
		c.MaxBodyBytes = 32 << 20
	}
	if c.MaxBodyBytesInFlight <= 0 {
		c.MaxBodyBytesInFlight = 4 * c.MaxBodyBytes
	}
	if c.RetryAfter <= 0 {
		c.RetryAfter = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.BodyReadTimeout <= 0 {
		c.BodyReadTimeout = 60 * time.Second
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 30 * time.Second
	}
	if c.StreamBuffer <= 0 {
		c.StreamBuffer = 8 << 20
	}
	if c.SyncOutageWait <= 0 {
		c.SyncOutageWait = DefaultSyncOutageWait
	}
	if c.outageProbe <= 0 {
		c.outageProbe = outageProbe
	}
	if c.outageFresh <= 0 {
		c.outageFresh = outageFresh
	}
	if c.bodyWait <= 0 {
		c.bodyWait = c.SyncOutageWait
	}
	if c.submitWait <= 0 {
		c.submitWait = submitTimeout
	}
	if c.natsSubmitWait <= 0 {
		c.natsSubmitWait = natsSubmitTimeout
	}
	if c.metadataMax <= 0 {
		c.metadataMax = ollama.MaxMetadataBody
	}
	if c.artifactReads <= 0 {
		c.artifactReads = maxArtifactReads
	}
	if c.listResults <= 0 {
		c.listResults = maxListResults
	}
	if c.capsMax <= 0 {
		c.capsMax = maxCapsEntries
	}
	if c.SyncPriority == "" {
		c.SyncPriority = broker.PriorityHigh
	}
	if c.JobsPriority == "" {
		c.JobsPriority = broker.PriorityNormal
	}
}

func (c *Config) validate() error {
	switch {
	case c.Store == nil:
		return errors.New("gateway: Config.Store is required")
	case c.Target == nil:
		return errors.New("gateway: Config.Target is required")
	case c.Inventory == nil:
		return errors.New("gateway: Config.Inventory is required")
	}
	for _, p := range []broker.Priority{c.SyncPriority, c.JobsPriority} {
		if _, err := broker.ParsePriority(string(p)); err != nil {
			return fmt.Errorf("gateway: %w", err)
		}
	}
	return nil
}

// Server serves foreman's HTTP API.
type Server struct {
	cfg     Config
	store   *broker.Store
	target  ollama.Client
	inv     *ollama.Inventory
	log     *slog.Logger
	mux     *http.ServeMux
	handler http.Handler
	origins *originPolicy
	hosts   *hostPolicy
	caps    modelCaps // which models are embedding models (embeddings.go)
	// hostRefusals and originRefusals let a browser-policy refusal's warning through
	// once per refusalLogEvery: a page may send thousands a second, each counted in
	// foreman_requests_refused_total.
	hostRefusals, originRefusals rate.Sometimes
	// authRefusals lets a 401's warning through once per refusalLogEvery.
	authRefusals rate.Sometimes
	// failures lets a 5xx failure's error line through once per failurelog.Every.
	failures failurelog.Window
	syncs    syncStats
	// outageChecks keeps the last check that found the own target down (outage.go).
	outageChecks outageChecks
	// bodies is the budget of request bodies in flight (bodies.go).
	bodies *bodyBudget
	// artifactReads are the places of the artifact bodies being sent (jobs_artifacts.go).
	artifactReads *artifactPlaces
	// tokens are the accepted bearer tokens' digests; none means no auth.
	tokens       []tokenKey
	modelAdmins  map[string]bool // Config.ModelAdmins; nil: every token may manage models
	programLocks programLocks

	// streams counts sync responses of a running job, so shutdown can wait for them.
	// streamsMu orders each count with AnswerWaiting's wait: once that has begun
	// (streamsShut) a sync call is refused instead, as no wait would cover it.
	streams     sync.WaitGroup
	streamsMu   sync.Mutex
	streamsShut bool
	// ending is closed by AnswerWaiting: responses still waiting for a job end then.
	ending    chan struct{}
	endingOne sync.Once
	// stopping is closed by Stopping, as foreman begins to stop: on a store of its own,
	// responses whose job has not started end then (syncResponse.stopping).
	stopping    chan struct{}
	stoppingOne sync.Once

	// models bounds the model labels of the metrics; jobMetrics are the job counters
	// (metrics_jobs.go).
	models     *modelLabels
	jobMetrics *jobMetrics

	// beforeSubmit, when set (tests only), runs after a submit claimed its idempotency
	// key and before it writes the job.
	beforeSubmit func(jobID string)
	// trace, when set (tests and benchmarks only), is told each stage a sync job's
	// response reaches (the trace* constants in queued.go) and when.
	trace func(jobID, stage string, at time.Time)
}

// New builds the server and its routes.
func New(cfg Config) (*Server, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, store: cfg.Store, target: cfg.Target, inv: cfg.Inventory, log: cfg.Logger, ending: make(chan struct{}), stopping: make(chan struct{}), models: &modelLabels{},
		bodies: &bodyBudget{limit: cfg.MaxBodyBytesInFlight}, artifactReads: newArtifactPlaces(cfg.artifactReads)}
	s.outageChecks.probe, s.outageChecks.fresh, s.outageChecks.base = cfg.outageProbe, cfg.outageFresh, time.Now()
	s.jobMetrics = newJobMetrics(s.models, cfg.Store.WroteState, cfg.Store.JobTTL)
	s.hostRefusals.Interval, s.originRefusals.Interval, s.authRefusals.Interval = refusalLogEvery, refusalLogEvery, refusalLogEvery
	var err error
	if s.tokens, err = cfg.tokenKeys(); err != nil {
		return nil, err
	}
	if s.modelAdmins, err = cfg.modelAdminSet(); err != nil {
		return nil, err
	}
	if s.origins, err = newOriginPolicy(cfg.Origins); err != nil {
		return nil, err
	}
	s.hosts = newHostPolicy(cfg.ListenAddr)
	s.mux = http.NewServeMux()
	s.routes(s.mux)
	s.handler = s.boundUnreadBodies(s.recoverPanics(s.boundWrites(s.logRequests(s.browserPolicy(s.authenticate(s.serverRequests(s.mux)))))))
	return s, nil
}

// serverRequests answers the requests whose target is no path, which the mux would answer
// in its own way: "OPTIONS *" (a request about the server, net/http's own answer unless
// http.Server.DisableGeneralOptionsHandler, which serve sets: that one read the body with
// no deadline, and took no token) with the methods foreman serves, any other method of
// "*" and CONNECT (authority-form, a proxy's request) with a JSON error rather than the
// mux's empty 400 and plain-text 405.
func (s *Server) serverRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodConnect:
			s.writeError(w, r, refuse(ErrMethodNotAllowed, "method CONNECT is not allowed: foreman is not a proxy"))
		case r.RequestURI == "*" && r.Method == http.MethodOptions:
			w.Header().Set("Allow", "GET, HEAD, POST, DELETE, OPTIONS")
			w.WriteHeader(http.StatusOK)
		case r.RequestURI == "*":
			s.writeError(w, r, badRequest(fmt.Sprintf("request target * is for OPTIONS only, not %s", clipInput(r.Method))))
		default:
			next.ServeHTTP(w, r)
		}
	})
}

// ServeHTTP makes the Server an http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.handler.ServeHTTP(w, r) }

// routes lists every route; each group lives in its own file.
func (s *Server) routes(mux *http.ServeMux) {
	mux.HandleFunc("GET /healthz", s.handleHealthz)
	mux.Handle("GET /metrics", newMetricsHandler(s))
	mux.HandleFunc("GET /queue", s.handleQueue) // queue.go
	s.ollamaRoutes(mux)                         // passthrough.go: metadata, embeddings, model management
	s.queuedRoutes(mux)                         // queued.go: /api/chat, /api/generate, /v1 completions
	s.jobRoutes(mux)                            // jobs.go: the async /jobs API
	s.uiRoutes(mux)                             // ui_routes.go: the status page under /ui/
	mux.HandleFunc("/", s.handleNotFound)
}

// withoutTrailingSlash is r's URL without its path's trailing slash, when a route other
// than the catch-all takes that path with r's method.
func (s *Server) withoutTrailingSlash(r *http.Request) (string, bool) {
	p := r.URL.Path
	if len(p) < 2 || !strings.HasSuffix(p, "/") {
		return "", false
	}
	// Only a clean path: one with "//", ".." or escaped slashes would redirect to a path
	// the client did not name, or (starting "//") to another host.
	trimmed := strings.TrimSuffix(p, "/")
	if path.Clean(trimmed) != trimmed || strings.HasPrefix(trimmed, "//") || r.URL.RawPath != "" {
		return "", false
	}
	probe := r.Clone(r.Context())
	probe.URL.Path, probe.URL.RawPath = trimmed, ""
	if _, pattern := s.mux.Handler(probe); pattern == "/" || pattern == "" || headRefused[pattern] {
		return "", false
	}
	u := *probe.URL
	u.Scheme, u.Host = "", ""
	return u.RequestURI(), true
}

// handleNotFound answers what no route matched ("GET /" is handleRoot, passthrough.go):
// a redirect for a known route asked with a trailing slash, 405 with Allow for a known
// path asked with another method (as Ollama does), else 404. The catch-all route hides
// the mux's own 405, so the other methods are tried here.
func (s *Server) handleNotFound(w http.ResponseWriter, r *http.Request) {
	if target, ok := s.withoutTrailingSlash(r); ok {
		// As Ollama's router: a known route asked with a trailing slash is redirected,
		// 301 for a GET, 307 (the method and body kept) for the rest.
		code := http.StatusTemporaryRedirect
		if r.Method == http.MethodGet {
			code = http.StatusMovedPermanently
		}
		http.Redirect(w, r, target, code)
		return
	}
	var allow []string
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodDelete} {
		if m == r.Method {
			continue
		}
		probe := r.Clone(r.Context())
		probe.Method = m
		if _, pattern := s.mux.Handler(probe); pattern != "/" && pattern != "" && !headRefused[pattern] {
			allow = append(allow, m)
		}
	}
	if len(allow) > 0 {
		w.Header().Set("Allow", strings.Join(allow, ", "))
		if ollamaPath(r.URL.Path) {
			writeRouterMiss(w, http.StatusMethodNotAllowed, "405 method not allowed")
			return
		}
		s.writeError(w, r, refuse(ErrMethodNotAllowed, "method not allowed"))
		return
	}
	if ollamaPath(r.URL.Path) {
		writeRouterMiss(w, http.StatusNotFound, "404 page not found")
		return
	}
	s.writeError(w, r, refuse(ErrNoRoute, "404 page not found"))
}

// ollamaPath reports whether path is in Ollama's namespaces, where a client expects
// Ollama's own answers; the rest (/jobs, /healthz, ...) are foreman's.
func ollamaPath(path string) bool {
	return path == "/api" || path == "/v1" || strings.HasPrefix(path, "/api/") || strings.HasPrefix(path, "/v1/")
}

// writeRouterMiss answers a path or method no route takes as Ollama's router (gin)
// does: plain text, not an error object. Clients read that text as the message, where
// they would show an OpenAI-shaped error on a route Ollama does not have (ollama-js's
// systemone, the Anthropic SDK's count_tokens) as "[object Object]" or with a type
// Ollama never sent.
func writeRouterMiss(w http.ResponseWriter, status int, text string) {
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, text)
}
