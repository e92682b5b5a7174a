package client

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/gateway/webhook/signature"
)

// Webhook verification errors (the signature package's, so errors.Is matches either).
var (
	// ErrWebhookHeaders: webhook-id, webhook-timestamp or both signatures are missing.
	ErrWebhookHeaders = signature.ErrMissingHeaders
	// ErrWebhookTimestamp: webhook-timestamp is too far from now (a stale delivery, or
	// one replayed later), or is malformed (ErrWebhookTimestampMalformed matches it too).
	ErrWebhookTimestamp = signature.ErrBadTimestamp
	// ErrWebhookTimestampMalformed: webhook-timestamp is not Unix seconds as foreman
	// writes them (decimal digits, no "+", no leading zero): no number, or the signed
	// number written otherwise. errors.Is matches it against ErrWebhookTimestamp as well.
	ErrWebhookTimestampMalformed = signature.ErrMalformedTimestamp
	// ErrWebhookSignature: no signature matches (a forged or tampered delivery, or
	// another secret).
	ErrWebhookSignature = signature.ErrNoMatch
	// ErrWebhookSecret: the secret given to VerifyWebhook is empty.
	ErrWebhookSecret = signature.ErrNoSecret
)

// VerifyWebhook checks a webhook foreman sent. Both of foreman's signatures are the
// HMAC-SHA256 of the same string,
//
//	<webhook-id> "." <webhook-timestamp> "." <body>
//
// (webhook-timestamp in decimal Unix seconds, the body byte for byte): webhook-signature holds
// space-separated "v1,<base64>" values (Standard Webhooks 1.0), X-Foreman-Signature
// "sha256=<hex>". One of them must match, and webhook-timestamp must be Unix seconds
// written as foreman writes them (else ErrWebhookTimestampMalformed: "+1700000000" is not
// what was signed) within tolerance of now (5 minutes when tolerance is 0; else
// ErrWebhookTimestamp), so a captured delivery cannot be replayed later or under a fresh
// timestamp. secret is foreman's
// FOREMAN_WEBHOOK_SECRET: "whsec_<base64>" is decoded, anything else is the raw key; an
// empty secret (or key) is ErrWebhookSecret. Receivers should also dedupe on webhook-id:
// deliveries are at-least-once.
func VerifyWebhook(secret string, header http.Header, body []byte, tolerance time.Duration) error {
	return signature.Verify(secret, header, body, tolerance)
}

// receiver is Submit's ephemeral webhook endpoint: one random path on one listener, for
// one job, retired when Submit returns (see Client.retire).
type receiver struct {
	url    string
	events chan Event
	// clockOff gets how far from this machine's clock a delivery signed with the secret
	// was stamped, when that is outside the tolerance (see clockDifference).
	clockOff chan time.Duration
	srv      *http.Server
	done     chan struct{} // closed once the wait takes no more events
	quitOnce sync.Once
	once     sync.Once
	served   sync.WaitGroup
	// settled: foreman sends this receiver nothing more (it took a terminal event, or
	// answered 410), so it need not stay open once retired.
	settled atomic.Bool
	linger  *time.Timer // set by retire, under the client's lingerMu
}

// maxWebhookBody bounds a delivery: a state event with an inline result (≤ 64 KiB) and
// room to spare.
const maxWebhookBody = 1 << 20

// The receiver's bounds on a connection. It may listen on the LAN (WithWebhookListenAddr),
// where anyone can connect, for as long as a job takes: without them a client that
// declared a body and sent none, or kept a connection alive and sent nothing more, held a
// goroutine and a file descriptor of the program for the whole wait.
const (
	// receiverBodyWait bounds the wait for a request's body (a delivery is at most
	// maxWebhookBody, sent at once), including one the receiver does not read, which
	// net/http reads before it answers.
	receiverBodyWait = 10 * time.Second
	// receiverIdle bounds a kept-alive connection's wait for its next request: longer
	// than foreman's own keep-alive (Go's 90 s), so that foreman never sends on a
	// connection the receiver is closing.
	receiverIdle = 2 * time.Minute
	// receiverMaxHeader bounds a request's line and headers (431 beyond): foreman sends
	// a few hundred bytes, a proxy in front may add some.
	receiverMaxHeader = 64 << 10
)

// errWebhookUnreachable: the receiver would get no URL foreman can call.
var errWebhookUnreachable = errors.New("client: webhook receiver: no address foreman can reach (see WithWebhookURL)")

func (c *Client) listenWebhook() (*receiver, error) {
	host, _, err := net.SplitHostPort(c.webhookAddr)
	if err != nil {
		return nil, fmt.Errorf("client: webhook receiver: %w", err)
	}
	base := c.webhookURL
	var advertise string
	if base == "" {
		// Decided before binding: a receiver foreman cannot reach is not worth a port.
		if advertise, err = c.advertiseHost(host); err != nil {
			return nil, err
		}
	}
	if _, port, _ := net.SplitHostPort(c.webhookAddr); port != "0" {
		// A fixed port is the one a retired receiver still holds: this Submit's
		// receiver takes it over.
		c.closeLingering(false)
	}
	ln, err := net.Listen("tcp", c.webhookAddr)
	if err != nil {
		return nil, fmt.Errorf("client: webhook receiver: %w", err)
	}
	if base == "" {
		_, port, _ := net.SplitHostPort(ln.Addr().String())
		base = "http://" + net.JoinHostPort(advertise, port)
	}
	var tok [16]byte
	_, _ = rand.Read(tok[:])
	path := "/foreman-webhook/" + hex.EncodeToString(tok[:])
	r := &receiver{
		url:      base + path,
		events:   make(chan Event, 16),
		clockOff: make(chan time.Duration, 1),
		done:     make(chan struct{}),
	}
	secret := c.webhookSecret
	// The path is matched by its end, so a proxy in front of a WithWebhookURL may
	// forward the public URL's path prefix or strip it.
	bodyWait, idle := receiverBodyWait, receiverIdle
	if c.webhookBodyWait > 0 {
		bodyWait = c.webhookBodyWait
	}
	if c.webhookIdle > 0 {
		idle = c.webhookIdle
	}
	handler := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		rc := http.NewResponseController(w)
		if req.ContentLength != 0 {
			// Read or not, the body must come in time: net/http reads one left unread
			// before it answers, with no deadline of its own.
			_ = rc.SetReadDeadline(time.Now().Add(bodyWait))
		}
		if !strings.HasSuffix(req.URL.Path, path) {
			http.NotFound(w, req)
			return
		}
		if req.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, req.Body, maxWebhookBody))
		if err != nil {
			http.Error(w, "bad body", http.StatusBadRequest)
			return
		}
		// Read to its end: no deadline now, which would fail net/http's watch on the
		// connection, and so cancel the request, while the event waits for its reader.
		_ = rc.SetReadDeadline(time.Time{})
		if secret != "" {
			if err := VerifyWebhook(secret, req.Header, body, 0); err != nil {
				if off, ok := clockDifference(secret, req.Header, body, err); ok {
					// Its event is not trusted (it may be a replay), but the wait is told
					// to poll: every delivery of foreman's would be refused alike. 410 has
					// foreman send this job no more (a 401 would be retried for hours).
					select {
					case r.clockOff <- off:
					default: // told already
					}
					defer c.lastWord(r)
					http.Error(w, "webhook timestamp too far from this receiver's clock; the job is polled instead", http.StatusGone)
					return
				}
				http.Error(w, err.Error(), http.StatusUnauthorized)
				return
			}
		}
		e, err := eventOfRecord(body)
		if errors.Is(err, errUnknownState) {
			// A later foreman's state: taken and passed over. A 4xx would have foreman
			// deliver it again for hours; the wait goes on to the states it knows.
			w.WriteHeader(http.StatusNoContent)
			return
		}
		if err != nil || e.JobID == "" {
			http.Error(w, "not a foreman state event", http.StatusBadRequest)
			return
		}
		gone := func() {
			// 410: foreman sends this job's events here no more.
			defer c.lastWord(r)
			w.WriteHeader(http.StatusGone)
		}
		select {
		case <-r.done: // ahead of a free place in events, which no one reads now
			gone()
			return
		default:
		}
		select {
		case r.events <- e:
			if e.State.Terminal() {
				r.settled.Store(true)
			}
			w.WriteHeader(http.StatusNoContent)
		case <-r.done:
			gone()
		case <-req.Context().Done():
		}
	})
	r.srv = &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: idle, MaxHeaderBytes: receiverMaxHeader}
	if c.onWebhookListen != nil {
		c.onWebhookListen(r.url, ln.Addr().String())
	}
	r.served.Add(1)
	go func() {
		defer r.served.Done()
		_ = r.srv.Serve(ln)
	}()
	return r, nil
}

// clockDifference tells a delivery refused (err) for its timestamp alone: signed with
// secret, but stamped too far from this machine's clock. Either the clocks of foreman and
// this machine differ, and every delivery of foreman's would be refused alike, or it is
// a captured delivery replayed; either way its event is not taken. off is its stamp
// less this machine's time.
func clockDifference(secret string, header http.Header, body []byte, err error) (off time.Duration, ok bool) {
	if !errors.Is(err, ErrWebhookTimestamp) {
		return 0, false
	}
	ts, perr := strconv.ParseInt(header.Get(signature.HeaderTimestamp), 10, 64)
	if perr != nil || VerifyWebhook(secret, header, body, time.Duration(math.MaxInt64)) != nil {
		return 0, false
	}
	return time.Until(time.Unix(ts, 0)), true
}

// clockError is what OnWaitError is told of a delivery whose timestamp was off by off.
func clockError(off time.Duration) error {
	dir := "ahead of"
	if off < 0 {
		dir, off = "behind", -off
	}
	return fmt.Errorf("client: webhook receiver: a delivery signed with the webhook secret is stamped %v %s this machine's clock "+
		"(the clocks of foreman and this machine differ, or it was replayed): its event is not taken, and the job is polled every poll interval: %w",
		off.Round(time.Second), dir, ErrWebhookTimestamp)
}

// advertiseHost is the host foreman should call a receiver listening on listenHost at,
// when no WithWebhookURL says so. An unspecified host (all interfaces) becomes a loopback
// address, and a loopback host is kept, only when foreman itself runs on this machine
// (its URL is loopback); otherwise the receiver has no address foreman is known to
// reach, and Submit waits by polling instead.
func (c *Client) advertiseHost(listenHost string) (string, error) {
	ip := net.ParseIP(listenHost)
	switch {
	case listenHost == "" || (ip != nil && ip.IsUnspecified()):
		if !c.loopback() {
			return "", errWebhookUnreachable
		}
		if ip == nil || ip.To4() == nil {
			// "" and "::" listen dual-stack: answer in the family foreman's URL uses.
			if u, err := url.Parse(c.base); err == nil && u.Hostname() == "::1" {
				return "::1", nil
			}
		}
		return "127.0.0.1", nil
	case isLoopbackHost(listenHost) && !c.loopback():
		return "", errWebhookUnreachable
	default:
		return listenHost, nil
	}
}

// quit makes the receiver take no more events: it answers deliveries 410.
func (r *receiver) quit() { r.quitOnce.Do(func() { close(r.done) }) }

// close stops the receiver and releases its port.
func (r *receiver) close() {
	r.once.Do(func() {
		r.quit()
		_ = r.srv.Close()
		r.served.Wait()
	})
}

// receiverLinger is how long a retired receiver whose job may still send it an event
// stays open to answer it 410.
const receiverLinger = 10 * time.Second

// lastWord marks r settled as its handler answers foreman 410: foreman sends it nothing
// more. A receiver retired already then closes, in the background, once that answer
// has gone out, rather than lingering out receiverLinger: a program whose callers give
// up on many Submits would otherwise hold a port and its goroutines for each of them
// that long after foreman said its last. One not retired yet closes when it is.
func (c *Client) lastWord(r *receiver) {
	r.settled.Store(true)
	select {
	case <-r.done:
	default:
		return // retire closes it
	}
	c.lingerMu.Lock()
	if _, ok := c.lingering[r]; ok {
		delete(c.lingering, r)
		r.linger.Stop()
	}
	c.lingerMu.Unlock()
	go r.shutdown()
}

// shutdown closes a settled receiver: its port at once, its connections once the answers
// its handlers are writing have gone out (a connection closed under one would have
// foreman deliver that event again, to a closed port, for hours), within receiverGrace.
func (r *receiver) shutdown() {
	r.quit()
	ctx, cancel := context.WithTimeout(context.Background(), receiverGrace)
	defer cancel()
	_ = r.srv.Shutdown(ctx)
	r.close()
}

// receiverGrace bounds the wait of shutdown, which Submit's return makes: an answer to
// foreman takes far less, and a LAN client holding a request open (its body comes within
// receiverBodyWait) delays the return at most this.
const receiverGrace = time.Second

// retire ends a receiver when Submit returns. Unless foreman sends it nothing more (it
// took its job's terminal event, or answered 410), it answers foreman's deliveries 410
// for receiverLinger before it closes (Close closes it at once): an event that comes just
// after Submit returned (the canceled event of WithCancelOnContextDone's cancel, a
// terminal event a poll saw first) then ends the job's deliveries, where a closed port
// had foreman retry it, refused, for hours (ADR-0092).
func (c *Client) retire(r *receiver) {
	r.quit()
	if r.settled.Load() {
		r.shutdown()
		return
	}
	c.lingerMu.Lock()
	defer c.lingerMu.Unlock()
	if c.closed {
		r.close()
		return
	}
	if c.lingering == nil {
		c.lingering = make(map[*receiver]struct{})
	}
	c.lingering[r] = struct{}{}
	r.linger = time.AfterFunc(receiverLinger, func() {
		c.lingerMu.Lock()
		delete(c.lingering, r)
		c.lingerMu.Unlock()
		r.close()
	})
}

// closeLingering closes the retired receivers still open, at once; for good (Close)
// also those retired later.
func (c *Client) closeLingering(forGood bool) {
	c.lingerMu.Lock()
	c.closed = c.closed || forGood
	rs := c.lingering
	c.lingering = nil
	for r := range rs {
		r.linger.Stop()
	}
	c.lingerMu.Unlock()
	for r := range rs {
		r.close()
	}
}
