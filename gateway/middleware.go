package gateway

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/gateway/ui"
)

// authenticate requires a bearer token on every route but /healthz and the status page's
// static files (ui.IsStatic) when tokens are set.
// A named token's name (Config.AuthTokens) becomes the request's program (programKey).
// The presented token is compared with every configured one, and as SHA-256 digests, so
// neither which token matched nor the tokens' lengths show in the time taken.
func (s *Server) authenticate(next http.Handler) http.Handler {
	keys := s.tokens
	if len(keys) == 0 {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" || ((r.Method == http.MethodGet || r.Method == http.MethodHead) && ui.IsStatic(r.URL.Path)) {
			next.ServeHTTP(w, r)
			return
		}
		// The bearer token, or the X-Api-Key Anthropic's SDKs send (with both, either may
		// be the token: an SDK given a key and a token sends both).
		var sent []string
		if got, ok := bearerToken(r.Header.Get("Authorization")); ok {
			sent = append(sent, got)
		}
		if key := r.Header.Get("X-Api-Key"); key != "" {
			sent = append(sent, key)
		}
		match, idx := 0, 0
		for _, got := range sent {
			sum := sha256.Sum256([]byte(got))
			for i, k := range keys {
				eq := subtle.ConstantTimeCompare(sum[:], k.sum[:])
				idx = subtle.ConstantTimeSelect(eq&(1-match), i, idx) // the first token that matches names the program
				match |= eq
			}
		}
		if match != 1 {
			// A client with a stale token, or someone guessing: counted, and told in the
			// log once per refusalLogEvery, not a line per request.
			s.jobMetrics.refused.WithLabelValues("unauthorized").Inc()
			s.authRefusals.Do(func() {
				s.log.Warn("request refused: missing or wrong bearer token (the next in 10s are counted in foreman_requests_refused_total only)",
					"remote", r.RemoteAddr, "path", clipInput(r.URL.Path), "token_sent", len(sent) > 0)
			})
			w.Header().Set("WWW-Authenticate", `Bearer realm="foreman"`)
			s.writeError(w, r, refuse(ErrUnauthorized, "unauthorized: missing or wrong bearer token"))
			return
		}
		if name := keys[idx].program; name != "" {
			r = r.WithContext(context.WithValue(r.Context(), programKey{}, name))
		}
		next.ServeHTTP(w, r)
	})
}

// bearerToken returns the token of an "Authorization: Bearer <token>" value; the scheme
// is case-insensitive (RFC 9110 §11.1).
func bearerToken(v string) (string, bool) {
	scheme, token, ok := strings.Cut(v, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	return strings.TrimLeft(token, " "), true
}

// statusRecorder remembers the status for the request log and still lets handlers flush.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.status == 0 && code >= 200 { // a 1xx (HeaderEarlyJobID) precedes the answer's status
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach Flush and deadlines of the real writer.
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// Flush keeps streaming working for callers that type-assert http.Flusher.
func (r *statusRecorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// FlushError lets http.ResponseController.Flush report a failed flush (a client past
// its write deadline) instead of the silence of Flush.
func (r *statusRecorder) FlushError() error {
	return http.NewResponseController(r.ResponseWriter).Flush()
}

func (s *Server) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)
		s.log.Debug("http", "method", r.Method, "path", r.URL.Path, "status", rec.status, "duration", time.Since(start))
	})
}

// boundWrites gives every answer's writes Config.WriteTimeout to make progress: a client
// that stops reading (a stalled or hostile one) is cut off then, and what its answer
// held is freed, where it would hold the handler, and a whole artifact or job list, for
// as long as it kept its connection. The deadline is set before each write, flush and
// 1xx of the answer, so it measures a lack of progress, not the time a long stream or a
// big answer takes; the queued answers set their own (syncResponse) through Unwrap.
// net/http clears the deadline once the answer is out, so none outlives its answer on a
// kept-alive connection.
func (s *Server) boundWrites(next http.Handler) http.Handler {
	if s.cfg.WriteTimeout <= 0 {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pw := &progressWriter{ResponseWriter: w, rc: http.NewResponseController(w), timeout: s.cfg.WriteTimeout, cut: s.cfg.writeCut}
		next.ServeHTTP(pw, r)
		pw.deadline() // the server's last flush of the answer
	})
}

// progressWriter sets a write deadline before each write (see boundWrites).
type progressWriter struct {
	http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
	cut     func(err error) // Config.writeCut
	failed  bool
}

func (p *progressWriter) deadline() { _ = p.rc.SetWriteDeadline(time.Now().Add(p.timeout)) }

func (p *progressWriter) failure(err error) {
	if err != nil && !p.failed {
		p.failed = true
		if p.cut != nil {
			p.cut(err)
		}
	}
}

func (p *progressWriter) WriteHeader(code int) {
	p.deadline() // a 1xx goes out at once
	p.ResponseWriter.WriteHeader(code)
}

// Write writes b in chunks of writeChunk, each with its deadline.
func (p *progressWriter) Write(b []byte) (int, error) {
	n := 0
	for first := true; first || len(b) > 0; first = false {
		c := min(len(b), writeChunk)
		p.deadline()
		m, err := p.ResponseWriter.Write(b[:c])
		n += m
		if err != nil {
			p.failure(err)
			return n, err
		}
		b = b[c:]
	}
	return n, nil
}

func (p *progressWriter) FlushError() error {
	p.deadline()
	err := p.rc.Flush()
	p.failure(err)
	return err
}

// Flush serves callers that type-assert http.Flusher.
func (p *progressWriter) Flush() { _ = p.FlushError() }

// Unwrap lets http.ResponseController reach the real writer's deadlines.
func (p *progressWriter) Unwrap() http.ResponseWriter { return p.ResponseWriter }

func (s *Server) recoverPanics(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.log.Error("panic in handler", "method", r.Method, "path", r.URL.Path, "panic", v)
				s.writeError(w, r, refuse(ErrInternal, "internal error"))
			}
		}()
		next.ServeHTTP(w, r)
	})
}
