package gateway

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"unicode"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// Headers a caller of a queued route may send.
const (
	// HeaderPriority is a job's priority class: high, normal or low.
	HeaderPriority = "X-Foreman-Priority"
	// HeaderProgram names the calling program when no named token does.
	HeaderProgram = "X-Foreman-Program"
)

// NamedToken is a bearer token whose holder is a program: requests carrying it belong
// to Program, whatever they claim.
type NamedToken struct {
	Program string
	Token   string
}

// programKey is the request context key of the program a named token authenticated.
type programKey struct{}

// authProgram returns the program a named token proved for the request of ctx.
func authProgram(ctx context.Context) (string, bool) {
	p, ok := ctx.Value(programKey{}).(string)
	return p, ok
}

// tokenKey is one accepted bearer token, kept only as its digest; program is empty for
// the single unnamed token (Config.AuthToken).
type tokenKey struct {
	sum     [sha256.Size]byte
	program string
}

// ParseAuthTokens parses FOREMAN_AUTH_TOKENS: comma-separated name:token pairs. Errors
// name the entry, never a token.
func ParseAuthTokens(list string) ([]NamedToken, error) {
	var out []NamedToken
	for i, entry := range strings.Split(list, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		t, err := parseNamedToken(entry)
		if err != nil {
			return nil, fmt.Errorf("entry %d: %w", i+1, err)
		}
		out = append(out, t)
	}
	if len(out) == 0 {
		return nil, errors.New("no name:token entry")
	}
	return out, nil
}

// ParseAuthTokensFile parses a token file: one name:token a line; blank lines and lines
// starting with # are skipped. Errors name the line, never a token.
func ParseAuthTokensFile(data []byte) ([]NamedToken, error) {
	var out []NamedToken
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		t, err := parseNamedToken(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", i+1, err)
		}
		out = append(out, t)
	}
	if len(out) == 0 {
		return nil, errors.New("no name:token line")
	}
	return out, nil
}

func parseNamedToken(s string) (NamedToken, error) {
	name, token, ok := strings.Cut(s, ":")
	name, token = strings.TrimSpace(name), strings.TrimSpace(token)
	if !ok || token == "" {
		return NamedToken{}, errors.New("not name:token")
	}
	if err := broker.ValidateProgram(name); err != nil {
		// Not quoted: an entry written the other way round (token:name) has its token
		// here, and the message goes to the terminal and the service's log.
		return NamedToken{}, errors.New("the name before the \":\" must be 1 to 64 characters of A-Z a-z 0-9 . _ - " +
			"(not shown: written as token:name, it would be the token)")
	}
	// "alice:tok # laptop" is a comment to its writer and the token "tok # laptop" to a
	// parser: the callers sending "tok" would all get 401. A token with a control
	// character cannot be sent at all (no header carries one).
	if strings.ContainsFunc(token, unicode.IsControl) {
		return NamedToken{}, errors.New("the token of " + name + " has a control character, which no HTTP header carries: no client could send it")
	}
	if CommentAfter(token) {
		return NamedToken{}, errors.New("the token of " + name + " is followed by a comment (white space, then #), which would be read as part of it: a # comment goes on a line of its own")
	}
	return NamedToken{Program: name, Token: token}, nil
}

// CommentAfter reports whether token holds a # after white space: a comment written
// after the token (an env file keeps it in the value), which no token is meant to hold.
// (A # within a token is kept.)
func CommentAfter(token string) bool {
	for i := 1; i < len(token); i++ {
		if token[i] == '#' && (token[i-1] == ' ' || token[i-1] == '\t') {
			return true
		}
	}
	return false
}

// tokenKeys checks the configured tokens and returns their digests. A name may have
// several tokens (to rotate one); a token may not be listed twice.
func (c *Config) tokenKeys() ([]tokenKey, error) {
	if c.AuthToken != "" && len(c.AuthTokens) > 0 {
		return nil, errors.New("gateway: AuthToken and AuthTokens exclude each other")
	}
	var keys []tokenKey
	if c.AuthToken != "" {
		keys = append(keys, tokenKey{sum: sha256.Sum256([]byte(c.AuthToken))})
	}
	seen := map[[sha256.Size]byte]string{}
	for i, t := range c.AuthTokens {
		if err := broker.ValidateProgram(t.Program); err != nil {
			return nil, fmt.Errorf("gateway: AuthTokens[%d]: %w", i, err)
		}
		if t.Token == "" {
			return nil, fmt.Errorf("gateway: AuthTokens[%d] (%s): empty token", i, t.Program)
		}
		k := tokenKey{sum: sha256.Sum256([]byte(t.Token)), program: t.Program}
		if other, dup := seen[k.sum]; dup {
			return nil, fmt.Errorf("gateway: the token of %s is also the token of %s: each token names one program", t.Program, other)
		}
		seen[k.sum] = t.Program
		keys = append(keys, k)
	}
	return keys, nil
}

// modelAdminSet is Config.ModelAdmins as a set, nil when empty. Each must be the program
// of a named token: a name no token carries would leave model management to nobody by a
// typo, and without named tokens no request proves a program.
func (c *Config) modelAdminSet() (map[string]bool, error) {
	if len(c.ModelAdmins) == 0 {
		return nil, nil
	}
	named := map[string]bool{}
	for _, t := range c.AuthTokens {
		named[t.Program] = true
	}
	if len(named) == 0 {
		return nil, errors.New("gateway: ModelAdmins needs named tokens (AuthTokens): only a named token proves its caller's program")
	}
	set := map[string]bool{}
	for _, p := range c.ModelAdmins {
		if !named[p] {
			return nil, fmt.Errorf("gateway: ModelAdmins names %q, the program of no named token", clipInput(p))
		}
		set[p] = true
	}
	return set, nil
}

// modelAdmin lets through to h only the requests of a program Config.ModelAdmins names
// (all of them when it names none): h changes the target's models for every caller.
func (s *Server) modelAdmin(h http.HandlerFunc) http.HandlerFunc {
	if s.modelAdmins == nil {
		return h
	}
	return func(w http.ResponseWriter, r *http.Request) {
		if p, ok := authProgram(r.Context()); !ok || !s.modelAdmins[p] {
			s.jobMetrics.refused.WithLabelValues("not_model_admin").Inc()
			s.writeError(w, r, refuse(ErrForbidden, fmt.Sprintf("forbidden: program %q may not change the models (%s %s is for the programs of FOREMAN_MODEL_ADMINS)",
				p, r.Method, r.URL.Path)))
			return
		}
		h(w, r)
	}
}

// headerValue returns a header's value and whether it was sent; sent twice is an error.
func headerValue(h http.Header, name string) (string, bool, error) {
	vs, ok := h[textproto.CanonicalMIMEHeaderKey(name)]
	if !ok || len(vs) == 0 {
		return "", false, nil
	}
	if len(vs) > 1 {
		return "", false, badRequest(name + ": sent more than once")
	}
	return strings.TrimSpace(vs[0]), true, nil
}

// caller is who a submit comes from and the class it asks for.
type caller struct {
	program  string
	priority broker.Priority
}

// callerOf decides a submit's program and priority. A named token's program (in ctx)
// wins over anything the request says; else the X-Foreman-Program header (h, nil for
// NATS) or the body's "program" names it, and no name is the anonymous program. The
// priority is the X-Foreman-Priority header or the body's "priority", else def. A header
// and a body field that disagree are a 400.
func callerOf(ctx context.Context, h http.Header, bodyProgram string, bodyPriority broker.Priority, def broker.Priority) (caller, error) {
	c := caller{program: bodyProgram, priority: bodyPriority}
	if v, ok, err := headerValue(h, HeaderPriority); err != nil {
		return caller{}, err
	} else if ok {
		p, err := broker.ParsePriority(v)
		if err != nil {
			return caller{}, badRequest(HeaderPriority + ": " + strings.TrimPrefix(err.Error(), broker.ErrBadPriority.Error()+": "))
		}
		if c.priority != "" && c.priority != p {
			return caller{}, badRequest(fmt.Sprintf("%s %q and \"priority\" %q disagree", HeaderPriority, p, c.priority))
		}
		c.priority = p
	}
	if c.priority == "" {
		c.priority = def
	}
	if name, ok := authProgram(ctx); ok {
		c.program = name
		return c, nil
	}
	if v, ok, err := headerProgram(h); err != nil {
		return caller{}, err
	} else if ok {
		if c.program != "" && c.program != v {
			return caller{}, badRequest(fmt.Sprintf("%s %q and \"program\" %q disagree", HeaderProgram, v, c.program))
		}
		c.program = v
	}
	return c, nil
}

// headerProgram is h's X-Foreman-Program, checked (a malformed or repeated one is a 400);
// false when h has none.
func headerProgram(h http.Header) (string, bool, error) {
	v, ok, err := headerValue(h, HeaderProgram)
	if err != nil || !ok {
		return "", false, err
	}
	if err := broker.ValidateProgram(v); err != nil {
		return "", false, badRequest(HeaderProgram + ": " + strings.TrimPrefix(err.Error(), broker.ErrBadProgram.Error()+": "))
	}
	return v, true, nil
}

// requestProgram is the program a request that submits nothing comes from, for the
// shares of what it holds (ADR-0126): a named token's, else its X-Foreman-Program header
// (the caller's own word), else the anonymous program.
func requestProgram(r *http.Request) (string, error) {
	if p, ok := authProgram(r.Context()); ok {
		return p, nil
	}
	p, _, err := headerProgram(r.Header)
	return p, err
}

// programName is a program as messages show it.
func programName(p string) string {
	if p == "" {
		return "the anonymous program"
	}
	return "program " + strconv.Quote(p)
}

// submitCounted submits job unless its program already has MaxQueuePerProgram jobs in
// the queue (429). The count and the submit of one program run one at a time in this
// process, so its concurrent submits cannot pass the limit together; several foremen on
// one NATS may still overshoot it by their concurrent submits of that program.
func (s *Server) submitCounted(ctx context.Context, job *broker.Job, body []byte) (*broker.Job, error) {
	limit := s.cfg.MaxQueuePerProgram
	if limit <= 0 {
		return s.store.Submit(ctx, job, body)
	}
	unlock, err := s.programLocks.lock(ctx, job.Program)
	if err != nil {
		return nil, err
	}
	defer unlock()
	n, err := s.store.QueuedOfProgram(ctx, job.Program)
	if err != nil {
		return nil, err
	}
	if n >= uint64(limit) {
		return nil, refuse(ErrProgramLimit, fmt.Sprintf(
			"%s has %d jobs queued, its limit (FOREMAN_MAX_QUEUE_PER_PROGRAM=%d); retry later", programName(job.Program), n, limit))
	}
	return s.store.Submit(ctx, job, body)
}

// programLocks serializes the count-then-submit of each program.
type programLocks struct {
	mu    sync.Mutex
	locks map[string]*programLock
}

type programLock struct {
	ch    chan struct{}
	users int // holders and waiters; the lock is dropped when none is left
}

func (p *programLocks) lock(ctx context.Context, program string) (unlock func(), err error) {
	p.mu.Lock()
	if p.locks == nil {
		p.locks = map[string]*programLock{}
	}
	l := p.locks[program]
	if l == nil {
		l = &programLock{ch: make(chan struct{}, 1)}
		p.locks[program] = l
	}
	l.users++
	p.mu.Unlock()
	leave := func() {
		p.mu.Lock()
		if l.users--; l.users == 0 {
			delete(p.locks, program)
		}
		p.mu.Unlock()
	}
	select {
	case l.ch <- struct{}{}:
		return func() { <-l.ch; leave() }, nil
	case <-ctx.Done():
		leave()
		return nil, ctx.Err()
	}
}
