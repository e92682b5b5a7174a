package gateway

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Request bodies in flight (ADR-0048). Each body is bounded by Config.MaxBodyBytes; the
// bodies held at once are bounded by Config.MaxBodyBytesInFlight, a budget every handler
// that reads a body takes its bytes from and gives them back to once it no longer holds
// the body: after the submit stored the job, after a pass-through sent it to the target,
// and on every error.

// bodyBudget is the process's budget of request body bytes, shared among programs
// (ADR-0126): a program holds at most half of the bytes the other programs leave it, so
// one that stalls its bodies cannot hold the whole budget.
type bodyBudget struct {
	limit int64
	mu    sync.Mutex       // guards programs, and used's changes
	held  map[string]int64 // bytes held per program holding any
	used  atomic.Int64     // bytes taken and not yet given back: foreman_request_body_bytes_in_flight
	peak  atomic.Int64     // the most used has been: foreman_request_body_bytes_in_flight_peak
}

// hold starts a request's share of the budget, empty, for program (requestProgram's).
func (b *bodyBudget) hold(program string) *bodyHold { return &bodyHold{b: b, program: program} }

// bodyHold is one request's share of the budget. Its handler alone uses it.
type bodyHold struct {
	b         *bodyBudget
	program   string
	held      int64
	overShare bool // the last refusal was its program's share's, not the budget's
}

// take adds n bytes to the hold, or reports false (taking nothing) when the budget lacks
// them or the hold's program would hold more than its share.
func (h *bodyHold) take(n int64) bool {
	h.b.mu.Lock()
	defer h.b.mu.Unlock()
	if !h.allowed(n) {
		return false
	}
	used := h.b.used.Add(n)
	if h.b.held == nil {
		h.b.held = map[string]int64{}
	}
	h.b.held[h.program] += n
	h.held += n
	h.b.notePeak(used)
	return true
}

// allowed reports whether n more bytes fit the hold, under the budget's mu. A hold that
// is the only one holding bytes always gets them: a body larger than the whole budget
// (or than its program's share), but within the body limit, is served when it comes
// alone, and a zstd body may hold its compressed and its decoded form at once. Else the
// bytes must fit the budget, and the hold's program may then hold at most half of what
// the other programs leave: alone half of the budget, beside others less, so a program
// that comes later always finds room.
func (h *bodyHold) allowed(n int64) bool {
	used := h.b.used.Load()
	if used == h.held {
		return true
	}
	if used+n > h.b.limit {
		h.overShare = false
		return false
	}
	mine := h.b.held[h.program]
	h.overShare = 2*(mine+n) > h.b.limit-(used-mine)
	return !h.overShare
}

func (b *bodyBudget) notePeak(n int64) {
	for {
		p := b.peak.Load()
		if n <= p || b.peak.CompareAndSwap(p, n) {
			return
		}
	}
}

// fits reports whether take(n) would succeed now, taking nothing.
func (h *bodyHold) fits(n int64) bool {
	h.b.mu.Lock()
	defer h.b.mu.Unlock()
	return h.allowed(n)
}

// give hands n of the hold's bytes back.
func (h *bodyHold) give(n int64) {
	n = min(n, h.held)
	if n <= 0 {
		return
	}
	h.b.mu.Lock()
	defer h.b.mu.Unlock()
	h.held -= n
	if h.b.held[h.program] -= n; h.b.held[h.program] <= 0 {
		delete(h.b.held, h.program)
	}
	h.b.used.Add(-n)
}

// release hands every byte of the hold back. Safe on nil and more than once: handlers
// defer it, and call it early where they stop holding the body before they return.
func (h *bodyHold) release() {
	if h != nil {
		h.give(h.held)
	}
}

// errOverBudget is what a read stops with when the budget lacks the bytes it needs.
var errOverBudget = errors.New("request bodies in flight over their budget")

// budgetRefusal is the client's 503 for a body the budget, or its program's share of it
// (h's last refusal says which), has no room for; it is counted as a refusal by design
// (refusalReason "body_budget").
func (s *Server) budgetRefusal(h *bodyHold) error {
	if h.overShare {
		return fmt.Errorf("%w: %w", errOverBudget, refuse(ErrUnavailable, fmt.Sprintf(
			"too many request bodies in flight: %s holds half of what the other programs leave of the %d bytes foreman holds at once "+
				"(FOREMAN_MAX_BODY_BYTES_IN_FLIGHT); retry shortly", programName(h.program), s.cfg.MaxBodyBytesInFlight)))
	}
	return fmt.Errorf("%w: %w", errOverBudget, refuse(ErrUnavailable, fmt.Sprintf(
		"too many request bodies in flight: foreman holds at most %d bytes of them at once (FOREMAN_MAX_BODY_BYTES_IN_FLIGHT); retry shortly",
		s.cfg.MaxBodyBytesInFlight)))
}

// bodyProgram is the program whose share of the budget a request's body is taken from
// (ADR-0126), as requestProgram says: a body's own "program" member is not read yet. A
// malformed X-Foreman-Program counts as the anonymous program here; the routes that read
// it refuse it once the body is read.
func bodyProgram(r *http.Request) string {
	p, _ := requestProgram(r)
	return p
}

// bodyFirstRead is what a body that declares its length takes from the budget before a
// byte of it is read (up to its length); the rest is taken as it arrives. It is small:
// a client that declares a large body and sends nothing holds only this, so it takes
// thousands of such connections, not a hundred, to hold the default budget.
const bodyFirstRead = 64 << 10

// bodyRoomAhead is the room a body that declares its length needs in the budget (up to
// its length) for its reading to begin. The room is looked at, not taken: a body that
// would be refused within its first MiB is refused before it is uploaded (a client that
// sends "Expect: 100-continue" never sends it), while one that arrives slowly holds only
// what it sent.
const bodyRoomAhead = 1 << 20

// readBody reads a request body, bounded by the body limit, by BodyReadTimeout and by the
// budget of bodies in flight. The body's bytes stay taken from the budget until the
// caller releases the returned hold, which it must do on every path (defer it); on an
// error nothing is held, and the caller answers the error with writeError, which reads
// out the rest of a refused body the client is still sending (refuseUnread).
//
// The budget is taken as the body arrives: the buffer grows with it, each growth taken
// before it is made, so a client that declares much and sends little (or nothing) holds
// little. A body that declares its length (Content-Length, which net/http holds the
// client to: it never reads more, and fewer is an error) is refused at once when the
// budget lacks room for its first MiB (bodyRoomAhead; with "Expect: 100-continue" the
// client then sends nothing); else it takes its first read, up to 64 KiB, before a byte
// is read, and its buffer ends exactly at its length. One that does not (chunked) may be
// refused part way, as may a declared one past its first MiB.
//
// A client trickling its body (slow loris) gets 408 instead of holding a handler; the
// deadline bounds reading out a refused body too. It must not outlive the read: net/http
// cancels the request when its watch on the connection fails, which would end a long
// answer. (net/http clears it too when it starts that watch; clearing it here does not
// depend on that.)
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, *bodyHold, error) {
	if r.ContentLength == 0 { // no body: net/http says -1 when it does not know
		return []byte{}, s.bodies.hold(bodyProgram(r)), nil
	}
	rc := http.NewResponseController(w)
	deadline := s.cfg.BodyReadTimeout > 0 && rc.SetReadDeadline(time.Now().Add(s.cfg.BodyReadTimeout)) == nil
	bodyTaken(r) // bounded here from now, read or refused
	if r.ContentLength > s.cfg.MaxBodyBytes {
		var rest io.Reader // a body over twice the limit is not worth reading for its answer
		if r.ContentLength-s.cfg.MaxBodyBytes <= s.cfg.MaxBodyBytes {
			rest = r.Body
		}
		return nil, nil, refuseUnread(w, r, &http.MaxBytesError{Limit: s.cfg.MaxBodyBytes}, rest, false)
	}
	hold := s.bodies.hold(bodyProgram(r))
	var first int64
	if r.ContentLength > 0 {
		first = min(r.ContentLength, bodyFirstRead)
		if !hold.fits(min(r.ContentLength, bodyRoomAhead)) || !hold.take(first) {
			return nil, nil, refuseUnread(w, r, s.budgetRefusal(hold), r.Body, false)
		}
	}
	limit, exact := s.cfg.MaxBodyBytes, r.ContentLength > 0
	if exact {
		limit = r.ContentLength
	}
	bounded := http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes)
	body, err := readGrowing(bounded, limit, first, exact, hold)
	if deadline && err == nil {
		_ = rc.SetReadDeadline(time.Time{})
	}
	if err != nil {
		hold.release()
		var maxErr *http.MaxBytesError
		switch {
		case errors.As(err, &maxErr): // a chunked body: read out as much again
			return nil, nil, refuseUnread(w, r, err, io.LimitReader(r.Body, s.cfg.MaxBodyBytes), true)
		case errors.Is(err, errOverBudget):
			return nil, nil, refuseUnread(w, r, s.budgetRefusal(hold), bounded, true)
		}
		// The connection is not reused, and the deadline stays: net/http would otherwise
		// wait for the rest of the body before it sends the answer.
		w.Header().Set("Connection", "close")
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, nil, refuse(ErrBodyTimeout, fmt.Sprintf("request body not received within %s", s.cfg.BodyReadTimeout))
		}
		return nil, nil, badRequest("cannot read request body: " + err.Error())
	}
	return body, hold, nil
}

// unreadBody is a refusal (err) of a body its client is still sending; rest is what is
// left of it, bounded.
type unreadBody struct {
	err  error
	rest io.Reader
}

func (u *unreadBody) Error() string { return u.err.Error() }

// Unwrap makes statusOf and refusalReason see the refusal.
func (u *unreadBody) Unwrap() error { return u.err }

// refuseUnread is err, the refusal of a body not read to its end. The connection closes
// after the answer, whatever is left of the body: what follows is no next request. When
// the client sends the rest regardless (it did not ask to wait for "100 Continue", or
// reading began, which told it to go on), rest, what may be read of it (nil: none), is
// read out after the answer (writeError).
//
// Why read it: net/http reads at most 256 KiB of a body its handler left, then closes
// the connection on a client still sending, and the kernel answers that client's next
// bytes with a reset. A client that writes its whole body before it reads the answer
// (many do) has its write fail, and never sees the 503 or 413 that says why, nor its
// Retry-After. Reading the rest costs bandwidth, never memory; a body past rest's bound
// still has the connection closed on it.
func refuseUnread(w http.ResponseWriter, r *http.Request, err error, rest io.Reader, reading bool) error {
	w.Header().Set("Connection", "close")
	waits := strings.EqualFold(r.Header.Get("Expect"), "100-continue") && !reading
	if rest == nil || waits {
		return err
	}
	return &unreadBody{err: err, rest: rest}
}

// readOut sends the answer written so far, then reads the rest of the body and throws it
// away, until it ends, reaches its bound, or the body's read deadline passes.
func (u *unreadBody) readOut(w http.ResponseWriter) {
	if http.NewResponseController(w).Flush() != nil {
		return // the client is gone
	}
	_, _ = io.Copy(io.Discard, u.rest)
}

// readGrowing reads r, a body of at most limit bytes (r says when it is longer), into a
// buffer that grows as the body arrives, starting at capacity first, which hold has
// taken already. Each growth is taken from hold before it is made, at its full size:
// while the old buffer is copied into the new one both are held. The old one is given
// back after. It stops with errOverBudget when the budget lacks a growth; hold then keeps
// what it had, for the caller to release. With exact, r holds exactly limit bytes (a
// declared length): the buffer ends at that size, and the read there.
func readGrowing(r io.Reader, limit, first int64, exact bool, hold *bodyHold) ([]byte, error) {
	buf := make([]byte, 0, first)
	for {
		if exact && int64(len(buf)) == limit {
			return buf, nil
		}
		if len(buf) == cap(buf) {
			next := bodyGrowth(int64(cap(buf)), limit, exact)
			if !hold.take(next) {
				return nil, errOverBudget
			}
			grown := make([]byte, len(buf), next)
			copy(grown, buf)
			hold.give(int64(cap(buf)))
			buf = grown
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		switch {
		case errors.Is(err, io.EOF) && exact && int64(len(buf)) < limit:
			return nil, io.ErrUnexpectedEOF
		case errors.Is(err, io.EOF):
			return buf, nil
		case err != nil:
			return nil, err
		}
	}
}

// bodyGrowth is the next capacity of a body buffer of capacity c: doubling from 16 KiB
// (most chat bodies fit at once). Of a body of unknown length, a quarter more from 4 MiB
// on, so that a large body's buffer holds at most a quarter more than the body; it never
// passes limit+1 (a reader bounded at limit says so with one byte more) unless c already
// has. Of a declared one (exact; c is below limit then), doubling up to limit, where it
// ends: its last buffer is exact, and at most half of it is held twice while it grows.
func bodyGrowth(c, limit int64, exact bool) int64 {
	next := max(2*c, 16<<10)
	if exact {
		return min(next, limit)
	}
	if c >= 4<<20 {
		next = c + c/4
	}
	return max(min(next, limit+1), c+1)
}

// boundUnreadBodies keeps a request body no handler reads from holding its connection
// (ADR-0131). net/http reads such a body before it sends the answer (so that the
// connection can carry the next request) and again once the handler returns, with no
// deadline: a client that declared a body (a GET with a Content-Length, a POST answered
// 401 or 404) and sent nothing of it never got its answer, and its connection and
// goroutine stayed past every timeout foreman sets (ReadHeaderTimeout, IdleTimeout,
// BodyReadTimeout), a shutdown waiting on them as on requests being answered. So when the answer of a request whose
// body no handler began to read goes out, that body gets BodyReadTimeout to arrive: one
// sent in full is read out as before and the connection kept; one that does not come in
// time ends the wait, the answer goes out and the connection is closed. A body a handler
// began to read, or took in hand (bodyTaken), is that handler's: readBody and progressBody
// bound their own reads (a refused body's read-out too), and one read to its end must get
// no deadline (net/http's watch on the connection would fail at it and cancel the
// request, a long answer with it).
func (s *Server) boundUnreadBodies(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength == 0 || r.Body == nil || r.Body == http.NoBody {
			next.ServeHTTP(w, r)
			return
		}
		body := &touchedBody{ReadCloser: r.Body}
		r.Body = body
		uw := &unreadBodyWriter{ResponseWriter: w, body: body, rc: http.NewResponseController(w), timeout: s.cfg.BodyReadTimeout}
		next.ServeHTTP(uw, r)
		uw.answering()
	})
}

// bodyTaken tells boundUnreadBodies that a handler has taken r's body in hand and bounds
// its reads itself.
func bodyTaken(r *http.Request) {
	if b, ok := r.Body.(*touchedBody); ok {
		b.touched.Store(true)
	}
}

// touchedBody is a request body that tells whether a handler began to read it.
type touchedBody struct {
	io.ReadCloser
	touched atomic.Bool
}

func (b *touchedBody) Read(p []byte) (int, error) {
	b.touched.Store(true)
	return b.ReadCloser.Read(p)
}

func (b *touchedBody) Close() error {
	b.touched.Store(true) // net/http's Close reads out what is left, to its end maybe
	return b.ReadCloser.Close()
}

// unreadBodyWriter is the answer of a request with a body (boundUnreadBodies).
type unreadBodyWriter struct {
	http.ResponseWriter
	body    *touchedBody
	rc      *http.ResponseController
	timeout time.Duration
	once    sync.Once
}

// answering is called as the answer goes out (its status, its first write or flush, or
// the handler's return, where net/http sends it): a body no handler touched by then gets
// the time left to arrive.
func (u *unreadBodyWriter) answering() {
	u.once.Do(func() {
		if !u.body.touched.Load() && u.timeout > 0 {
			_ = u.rc.SetReadDeadline(time.Now().Add(u.timeout))
		}
	})
}

func (u *unreadBodyWriter) WriteHeader(code int) {
	if code >= 200 { // a 1xx (HeaderEarlyJobID) precedes the answer
		u.answering()
	}
	u.ResponseWriter.WriteHeader(code)
}

func (u *unreadBodyWriter) Write(p []byte) (int, error) {
	u.answering()
	return u.ResponseWriter.Write(p)
}

// FlushError lets http.ResponseController.Flush report a failed flush.
func (u *unreadBodyWriter) FlushError() error {
	u.answering()
	return http.NewResponseController(u.ResponseWriter).Flush()
}

// Flush serves callers that type-assert http.Flusher.
func (u *unreadBodyWriter) Flush() { _ = u.FlushError() }

// Unwrap lets http.ResponseController reach the real writer's deadlines.
func (u *unreadBodyWriter) Unwrap() http.ResponseWriter { return u.ResponseWriter }
