package ollamatest

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// Model is one model the fake has installed.
type Model struct {
	Name      string // e.g. "tiny-a:latest"; normalized by the server
	Embedding bool   // embedding-only: chat and generate are refused with 400
	Image     bool   // an image generation model: /v1/images answers it with an image
	Thinking  bool   // /api/show lists the "thinking" capability beside "completion"
	Tools     bool   // /api/show lists "tools" too, and a chat with tools is not refused
	Size      int64  // bytes; default 100 MB
	// Digest is the digest /api/tags and /api/ps list; default one of the name's. A model
	// pulled or created again under its name with other contents gets another: AddModel
	// it with a new Digest.
	Digest string
}

// digest is the digest the model lists.
func (m Model) digest() string {
	if m.Digest != "" {
		return m.Digest
	}
	return digestOf(m.Name)
}

// Config configures a Server. Zero values get the defaults noted.
type Config struct {
	// Models installed; default tiny-a:latest, tiny-b:latest (chat) and tiny-embed:latest (embedding).
	Models []Model
	// LoadDelay is slept whenever a chat/generate request swaps the loaded model.
	LoadDelay time.Duration
	// TokenDelay is the time between generated tokens, the first one included, kept on a
	// clock of the reply's own: writing a token does not delay the next (see pacer).
	TokenDelay time.Duration
	// Tokens per reply, unless a request sets options.num_predict (or max_tokens); default 5.
	Tokens int
	// MaxTokens caps the tokens of any reply, whatever the request asks; 0 means no cap.
	// Fuzz tests set it so that a fuzzed num_predict cannot ask for an endless reply.
	MaxTokens int
	// PullDelay is slept between the progress lines of pull, push and create.
	PullDelay time.Duration
	// GatePull makes every pull/push/create progress line wait for a PullStep call.
	GatePull bool
	// PullProgress is how many lines a pull's layer download sends, completed rising to
	// total; default 2. A big one streams for as long as a test needs (with GatePull).
	PullProgress int
	// Clock gives created_at and modified_at; default a fixed instant so replies are byte-reproducible.
	Clock func() time.Time
	// Version reported by /api/version; default "0.17.0".
	Version string
	// Addr is the address NewServer listens on (a fixed port, so a process can be
	// stopped and started again where its clients expect it); default a random
	// loopback port. NewServer panics when it cannot listen there.
	Addr string
	// BeforeChat, if set, runs for every chat/generate/completion request after the
	// model is loaded and before any byte is written; an error becomes a 500.
	BeforeChat func(ctx context.Context, model string) error
	// BeforeToken, if set, runs before token i (from 0) of every generated reply, after
	// TokenDelay; an error ends the reply there, as a client leaving does.
	BeforeToken func(ctx context.Context, i int) error
}

// Option changes a Config; used with New.
type Option func(*Config)

// WithModels replaces the installed models.
func WithModels(models ...Model) Option { return func(c *Config) { c.Models = models } }

// WithLoadDelay sets Config.LoadDelay.
func WithLoadDelay(d time.Duration) Option { return func(c *Config) { c.LoadDelay = d } }

// WithTokenDelay sets Config.TokenDelay.
func WithTokenDelay(d time.Duration) Option { return func(c *Config) { c.TokenDelay = d } }

// WithTokens sets Config.Tokens.
func WithTokens(n int) Option { return func(c *Config) { c.Tokens = n } }

// WithMaxTokens sets Config.MaxTokens.
func WithMaxTokens(n int) Option { return func(c *Config) { c.MaxTokens = n } }

// WithPullDelay sets Config.PullDelay.
func WithPullDelay(d time.Duration) Option { return func(c *Config) { c.PullDelay = d } }

// WithGatePull sets Config.GatePull.
func WithGatePull() Option { return func(c *Config) { c.GatePull = true } }

// WithPullProgress sets Config.PullProgress.
func WithPullProgress(n int) Option { return func(c *Config) { c.PullProgress = n } }

// WithClock sets Config.Clock.
func WithClock(f func() time.Time) Option { return func(c *Config) { c.Clock = f } }

// WithBeforeChat sets Config.BeforeChat.
func WithBeforeChat(f func(ctx context.Context, model string) error) Option {
	return func(c *Config) { c.BeforeChat = f }
}

// WithBeforeToken sets Config.BeforeToken.
func WithBeforeToken(f func(ctx context.Context, i int) error) Option {
	return func(c *Config) { c.BeforeToken = f }
}

// FixedTime is the default Clock's instant.
var FixedTime = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

// DefaultModels are installed when Config.Models is empty.
func DefaultModels() []Model {
	return []Model{
		{Name: "tiny-a:latest"},
		{Name: "tiny-b:latest"},
		{Name: "tiny-embed:latest", Embedding: true},
	}
}

// Call records one request the fake received.
type Call struct {
	Method   string
	Path     string
	Model    string // normalized; "" when the request names none
	Started  time.Time
	Ended    time.Time
	Finished bool   // the handler returned
	Canceled bool   // the client's request context ended before the response was complete
	Failure  string // the injected failure applied, if any
	Body     []byte // the request body as received
	RawPath  string // the request path as sent, escapes included
	RawQuery string // the query as sent, after the "?"
	Header   http.Header
}

// Server is a fake Ollama. All methods are safe for concurrent use.
type Server struct {
	// URL is the base URL, e.g. "http://127.0.0.1:54321".
	URL string

	cfg      Config
	hs       *httptest.Server
	pullGate chan struct{}

	mu          sync.Mutex
	models      []Model // normalized names, install order
	aliases     []ollama.Alias
	blobs       map[string]bool
	loaded      string
	resident    []string // listed by /api/ps after the loaded model (SetResident)
	loads       int
	down        *Failure // every request's failure while set (SetDown, SetDownWith)
	failures    []pendingFailure
	inFlight    int
	maxInFlight int
	embInFlight int
	maxEmbIn    int
	calls       []Call
	holds       map[string][]chan struct{}
	changed     chan struct{} // closed and replaced on every state change
}

// New starts a fake Ollama for a test and closes it in t.Cleanup.
func New(t testing.TB, opts ...Option) *Server {
	t.Helper()
	var cfg Config
	for _, o := range opts {
		o(&cfg)
	}
	s := NewServer(cfg)
	t.Cleanup(s.Close)
	return s
}

// NewServer starts a fake Ollama outside a test (benchmarks, dev tools); call Close.
func NewServer(cfg Config) *Server {
	if len(cfg.Models) == 0 {
		cfg.Models = DefaultModels()
	}
	if cfg.Tokens <= 0 {
		cfg.Tokens = 5
	}
	if cfg.PullProgress <= 0 {
		cfg.PullProgress = 2
	}
	if cfg.Clock == nil {
		cfg.Clock = func() time.Time { return FixedTime }
	}
	if cfg.Version == "" {
		cfg.Version = "0.17.0"
	}
	s := &Server{
		cfg:      cfg,
		pullGate: make(chan struct{}),
		blobs:    map[string]bool{},
		holds:    map[string][]chan struct{}{},
		changed:  make(chan struct{}),
	}
	for _, m := range cfg.Models {
		m.Name = ollama.NormalizeModel(m.Name)
		if m.Size == 0 {
			m.Size = 100_000_000
		}
		s.models = append(s.models, m)
	}
	s.hs = httptest.NewUnstartedServer(s.routes())
	if cfg.Addr != "" {
		ln, err := net.Listen("tcp", cfg.Addr)
		if err != nil {
			panic(fmt.Sprintf("ollamatest: listen on %s: %v", cfg.Addr, err))
		}
		s.hs.Listener.Close()
		s.hs.Listener = ln
	}
	s.hs.Start()
	s.URL = s.hs.URL
	return s
}

// Close shuts the server down, cutting any open connection. Safe to call twice.
func (s *Server) Close() {
	s.hs.CloseClientConnections()
	s.hs.Close()
}

// notifyLocked wakes every waiter; s.mu must be held.
func (s *Server) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// Loads counts model swaps done by chat/generate requests (SetLoaded does not count).
func (s *Server) Loads() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.loads
}

// LoadedModel returns the normalized name of the loaded model, or "".
func (s *Server) LoadedModel() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.loaded
}

// SetLoaded makes name the loaded model ("" unloads) without counting a load.
func (s *Server) SetLoaded(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loaded = ollama.NormalizeModel(name)
	s.notifyLocked()
}

// SetResident makes /api/ps list names as loaded too, after the loaded model, as an
// Ollama with OLLAMA_MAX_LOADED_MODELS > 1 keeps several models resident. It changes no
// request's load accounting.
func (s *Server) SetResident(names ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.resident = s.resident[:0]
	for _, n := range names {
		s.resident = append(s.resident, ollama.NormalizeModel(n))
	}
	s.notifyLocked()
}

// SetDown(true) drops the connection of every request, as if the target were
// down, until SetDown(false).
func (s *Server) SetDown(down bool) {
	if down {
		s.SetDownWith(DropConnection)
		return
	}
	s.SetDownWith(Failure{})
}

// SetDownWith applies f to every request, the metadata routes included, until
// SetDownWith(Failure{}) (or SetDown(false)): SetDownWith(ProxyError(502)) is a Mac gone
// behind nginx, whose every answer is the proxy's.
func (s *Server) SetDownWith(f Failure) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.down = nil
	if f.kind != 0 {
		s.down = &f
	}
}

// InFlight is the number of chat/generate/completion requests being served now.
func (s *Server) InFlight() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inFlight
}

// MaxInFlight is the highest InFlight seen.
func (s *Server) MaxInFlight() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxInFlight
}

// MaxEmbedInFlight is the highest number of concurrent embedding requests seen.
func (s *Server) MaxEmbedInFlight() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxEmbIn
}

// Calls returns a copy of every request received, in arrival order.
func (s *Server) Calls() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.calls)
}

// WaitFor blocks until cond, evaluated on the calls so far, is true, or ctx
// ends. cond runs with the server's lock held: it must not call Server methods.
func (s *Server) WaitFor(ctx context.Context, cond func(calls []Call) bool) error {
	return s.waitUntil(ctx, func() bool { return cond(s.calls) })
}

// waitUntil re-evaluates cond, under s.mu, after every state change.
func (s *Server) waitUntil(ctx context.Context, cond func() bool) error {
	for {
		s.mu.Lock()
		ok := cond()
		ch := s.changed
		s.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// WaitInFlight blocks until exactly n chat/generate/completion requests are in flight.
func (s *Server) WaitInFlight(ctx context.Context, n int) error {
	return s.waitUntil(ctx, func() bool { return s.inFlight == n })
}

// WaitStarted blocks until at least n inference calls (chat, generate,
// completions, responses, messages, embeddings) for model have started; model ""
// means any model.
func (s *Server) WaitStarted(ctx context.Context, model string, n int) error {
	want := ollama.NormalizeModel(model)
	return s.WaitFor(ctx, func(calls []Call) bool {
		c := 0
		for _, call := range calls {
			if isInference(call.Path) && call.Model != "" && (want == "" || call.Model == want) {
				c++
			}
		}
		return c >= n
	})
}

// WaitFinished blocks until at least n calls on path have finished.
func (s *Server) WaitFinished(ctx context.Context, path string, n int) error {
	return s.WaitFor(ctx, func(calls []Call) bool {
		c := 0
		for _, call := range calls {
			if call.Path == path && call.Finished {
				c++
			}
		}
		return c >= n
	})
}

// Hold makes chat/generate/completion requests for model ("" = every model)
// wait, after loading and before writing any byte, until release is called or
// the client goes away. Requests already waiting are covered too.
func (s *Server) Hold(model string) (release func()) {
	key := ollama.NormalizeModel(model)
	ch := make(chan struct{})
	s.mu.Lock()
	s.holds[key] = append(s.holds[key], ch)
	s.notifyLocked()
	s.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			s.holds[key] = slices.DeleteFunc(s.holds[key], func(c chan struct{}) bool { return c == ch })
			close(ch)
			s.notifyLocked()
			s.mu.Unlock()
		})
	}
}

// waitHolds blocks while a hold covers model.
func (s *Server) waitHolds(ctx context.Context, model string) error {
	for {
		s.mu.Lock()
		var ch chan struct{}
		if hs := s.holds[model]; len(hs) > 0 {
			ch = hs[0]
		} else if hs := s.holds[""]; len(hs) > 0 {
			ch = hs[0]
		}
		s.mu.Unlock()
		if ch == nil {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// PullStep releases one progress line of a pull/push/create when Config.GatePull is set.
func (s *Server) PullStep(ctx context.Context) error {
	select {
	case s.pullGate <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// findModel returns the installed model called name (any spelling).
func (s *Server) findModel(name string) (Model, bool) {
	n := ollama.NormalizeModel(name)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range s.models {
		if m.Name == n {
			return m, true
		}
	}
	return Model{}, false
}

// AddModel installs a model (as pull or create would).
func (s *Server) AddModel(m Model) {
	m.Name = ollama.NormalizeModel(m.Name)
	if m.Size == 0 {
		m.Size = 100_000_000
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.models {
		if s.models[i].Name == m.Name {
			s.models[i] = m
			return
		}
	}
	s.models = append(s.models, m)
}

// removeModel uninstalls name and reports whether it existed.
func (s *Server) removeModel(name string) bool {
	n := ollama.NormalizeModel(name)
	s.mu.Lock()
	defer s.mu.Unlock()
	before := len(s.models)
	s.models = slices.DeleteFunc(s.models, func(m Model) bool { return m.Name == n })
	if s.loaded == n {
		s.loaded = ""
	}
	return len(s.models) != before
}

// ensureLoaded swaps model in if another is loaded, sleeping LoadDelay. It
// returns how long the load took (0 when the model was already loaded).
func (s *Server) ensureLoaded(ctx context.Context, model string) (time.Duration, error) {
	s.mu.Lock()
	if s.loaded == model {
		s.mu.Unlock()
		return 0, nil
	}
	s.loaded = model
	s.loads++
	s.notifyLocked()
	s.mu.Unlock()
	if err := sleepCtx(ctx, s.cfg.LoadDelay); err != nil {
		return 0, err
	}
	return s.cfg.LoadDelay, nil
}

// enter counts a request in flight and returns the function that counts it out.
func (s *Server) enter(embed bool) func() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if embed {
		s.embInFlight++
		s.maxEmbIn = max(s.maxEmbIn, s.embInFlight)
	} else {
		s.inFlight++
		s.maxInFlight = max(s.maxInFlight, s.inFlight)
	}
	s.notifyLocked()
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if embed {
			s.embInFlight--
		} else {
			s.inFlight--
		}
		s.notifyLocked()
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
