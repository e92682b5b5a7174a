package gateway

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync/atomic"
	"time"
)

// Request bodies in flight (ADR-0048). Each body is bounded by Config.MaxBodyBytes; the
// bodies held at once are bounded by Config.MaxBodyBytesInFlight, a budget every handler
// that reads a body takes its bytes from and gives them back to once it no longer holds
// the body: after the submit stored the job, after a pass-through sent it to the target,
// and on every error.

// bodyBudget is the process's budget of request body bytes.
type bodyBudget struct {
	limit int64
	used  atomic.Int64 // bytes taken and not yet given back: foreman_request_body_bytes_in_flight
	peak  atomic.Int64 // the most used has been: foreman_request_body_bytes_in_flight_peak
}

// hold starts a request's share of the budget, empty.
func (b *bodyBudget) hold() *bodyHold { return &bodyHold{b: b} }

// bodyHold is one request's share of the budget. Its handler alone uses it.
type bodyHold struct {
	b    *bodyBudget
	held int64
}

// take adds n bytes to the hold, or reports false (taking nothing) when the budget lacks
// them. A hold that is the only one holding bytes always gets them: a body larger than
// the whole budget, but within the body limit, is served when it comes alone, and a zstd
// body may hold its compressed and its decoded form at once.
func (h *bodyHold) take(n int64) bool {
	for {
		used := h.b.used.Load()
		if used+n > h.b.limit && used != h.held {
			return false
		}
		if h.b.used.CompareAndSwap(used, used+n) {
			h.held += n
			h.b.notePeak(used + n)
			return true
		}
	}
}

func (b *bodyBudget) notePeak(n int64) {
	for {
		p := b.peak.Load()
		if n <= p || b.peak.CompareAndSwap(p, n) {
			return
		}
	}
}

// give hands n of the hold's bytes back.
func (h *bodyHold) give(n int64) {
	n = min(n, h.held)
	h.held -= n
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

// budgetRefusal is the client's 503 for a body the budget has no room for; it is counted
// as a refusal by design (refusalReason "body_budget").
func (s *Server) budgetRefusal() error {
	return fmt.Errorf("%w: %w", errOverBudget, refuse(ErrUnavailable, fmt.Sprintf(
		"too many request bodies in flight: foreman holds at most %d bytes of them at once (FOREMAN_MAX_BODY_BYTES_IN_FLIGHT); retry shortly",
		s.cfg.MaxBodyBytesInFlight)))
}

// readBody reads a request body, bounded by the body limit, by BodyReadTimeout and by the
// budget of bodies in flight. The body's bytes stay taken from the budget until the
// caller releases the returned hold, which it must do on every path (defer it); on an
// error nothing is held.
//
// A body that declares its length (Content-Length, which net/http holds the client to:
// it never reads more, and fewer is an error) takes it whole before a byte is read, is
// refused at once if the budget lacks it (the client has sent nothing more than its
// head, and with "Expect: 100-continue" sends nothing more), and is read into a buffer of
// exactly that size. One that does not (chunked) takes each growth of its buffer as it
// arrives, and may be refused part way.
//
// A client trickling its body (slow loris) gets 408 instead of holding a handler. The
// deadline must not outlive the read: net/http cancels the request when its watch on the
// connection fails, which would end a long answer. (net/http clears it too when it starts
// that watch; clearing it here does not depend on that.)
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, *bodyHold, error) {
	if r.ContentLength > s.cfg.MaxBodyBytes {
		w.Header().Set("Connection", "close") // the body stays unread
		return nil, nil, &http.MaxBytesError{Limit: s.cfg.MaxBodyBytes}
	}
	hold := s.bodies.hold()
	if r.ContentLength > 0 && !hold.take(r.ContentLength) {
		w.Header().Set("Connection", "close")
		return nil, nil, s.budgetRefusal()
	}
	rc := http.NewResponseController(w)
	deadline := s.cfg.BodyReadTimeout > 0 && rc.SetReadDeadline(time.Now().Add(s.cfg.BodyReadTimeout)) == nil
	var (
		body []byte
		err  error
	)
	switch {
	case r.ContentLength > 0:
		body = make([]byte, r.ContentLength)
		_, err = io.ReadFull(r.Body, body)
	case r.ContentLength == 0: // no body: net/http says -1 when it does not know
		body = []byte{}
	default:
		body, err = readGrowing(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes), s.cfg.MaxBodyBytes, hold)
	}
	if deadline && err == nil {
		_ = rc.SetReadDeadline(time.Time{})
	}
	if err != nil {
		hold.release()
		// The connection is not reused, and the deadline stays: net/http would otherwise
		// wait for the rest of the body before it sends the answer.
		w.Header().Set("Connection", "close")
		var maxErr *http.MaxBytesError
		switch {
		case errors.As(err, &maxErr):
			return nil, nil, err
		case errors.Is(err, errOverBudget):
			return nil, nil, s.budgetRefusal()
		case errors.Is(err, os.ErrDeadlineExceeded):
			return nil, nil, refuse(ErrBodyTimeout, fmt.Sprintf("request body not received within %s", s.cfg.BodyReadTimeout))
		}
		return nil, nil, badRequest("cannot read request body: " + err.Error())
	}
	return body, hold, nil
}

// readGrowing reads r, a body of unknown length of at most limit bytes (r says when it
// is longer), into a buffer that grows as the body arrives. Each growth is taken from
// hold before it is made, at its full size: while the old buffer is copied into the new
// one both are held. The old one is given back after. It stops with errOverBudget when
// the budget lacks a growth; hold then keeps what it had, for the caller to release.
func readGrowing(r io.Reader, limit int64, hold *bodyHold) ([]byte, error) {
	var buf []byte
	for {
		if len(buf) == cap(buf) {
			next := bodyGrowth(int64(cap(buf)), limit)
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
		if errors.Is(err, io.EOF) {
			return buf, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// bodyGrowth is the next capacity of a body buffer of capacity c: doubling from 16 KiB
// (most chat bodies fit at once), then a quarter more from 4 MiB on, so that a large
// body's buffer holds at most a quarter more than the body. It never passes limit+1 (a
// reader bounded at limit says so with one byte more) unless c already has.
func bodyGrowth(c, limit int64) int64 {
	next := max(2*c, 16<<10)
	if c >= 4<<20 {
		next = c + c/4
	}
	return max(min(next, limit+1), c+1)
}
