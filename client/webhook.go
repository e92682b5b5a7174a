package client

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Webhook verification errors.
var (
	ErrWebhookHeaders   = errors.New("webhook: missing webhook-id, webhook-timestamp or webhook-signature")
	ErrWebhookTimestamp = errors.New("webhook: timestamp outside the tolerance")
	ErrWebhookSignature = errors.New("webhook: no matching signature")
)

// VerifyWebhook checks a webhook foreman sent, the Standard Webhooks 1.0 way: the
// webhook-timestamp must be within tolerance of now (5 minutes when tolerance is 0) and one
// of the space-separated "v1,<base64>" values in webhook-signature must be the
// HMAC-SHA256 of "<webhook-id>.<webhook-timestamp>.<body>". secret is foreman's
// FOREMAN_WEBHOOK_SECRET: "whsec_<base64>" is decoded, anything else is the raw key.
// Receivers should also dedupe on webhook-id: deliveries are at-least-once.
func VerifyWebhook(secret string, header http.Header, body []byte, tolerance time.Duration) error {
	id, tsRaw, sigs := header.Get("webhook-id"), header.Get("webhook-timestamp"), header.Get("webhook-signature")
	if id == "" || tsRaw == "" || sigs == "" {
		return ErrWebhookHeaders
	}
	ts, err := strconv.ParseInt(tsRaw, 10, 64)
	if err != nil {
		return fmt.Errorf("%w: %q is not unix seconds", ErrWebhookTimestamp, tsRaw)
	}
	if tolerance <= 0 {
		tolerance = 5 * time.Minute
	}
	if d := time.Since(time.Unix(ts, 0)); d > tolerance || d < -tolerance {
		return ErrWebhookTimestamp
	}
	key, err := webhookKey(secret)
	if err != nil {
		return err
	}
	h := hmac.New(sha256.New, key)
	fmt.Fprintf(h, "%s.%d.", id, ts)
	h.Write(body)
	want := h.Sum(nil)
	for _, s := range strings.Fields(sigs) {
		v, b64, ok := strings.Cut(s, ",")
		if !ok || v != "v1" {
			continue
		}
		if got, err := base64.StdEncoding.DecodeString(b64); err == nil && hmac.Equal(got, want) {
			return nil
		}
	}
	return ErrWebhookSignature
}

func webhookKey(secret string) ([]byte, error) {
	if rest, ok := strings.CutPrefix(secret, "whsec_"); ok {
		k, err := base64.StdEncoding.DecodeString(rest)
		if err != nil {
			return nil, fmt.Errorf("webhook secret whsec_…: not valid base64: %w", err)
		}
		return k, nil
	}
	return []byte(secret), nil
}

// receiver is Submit's ephemeral webhook endpoint: one random path on one listener, for
// one job, closed when Submit returns.
type receiver struct {
	url    string
	events chan Event
	srv    *http.Server
	done   chan struct{}
	once   sync.Once
	served sync.WaitGroup
}

// maxWebhookBody bounds a delivery: a state event with an inline result (≤ 64 KiB) and
// room to spare.
const maxWebhookBody = 1 << 20

func (c *Client) listenWebhook() (*receiver, error) {
	ln, err := net.Listen("tcp", c.webhookAddr)
	if err != nil {
		return nil, fmt.Errorf("client: webhook receiver: %w", err)
	}
	var tok [16]byte
	_, _ = rand.Read(tok[:])
	path := "/foreman-webhook/" + hex.EncodeToString(tok[:])
	r := &receiver{
		url:    "http://" + ln.Addr().String() + path,
		events: make(chan Event, 16),
		done:   make(chan struct{}),
	}
	secret := c.webhookSecret
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+path, func(w http.ResponseWriter, req *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, req.Body, maxWebhookBody))
		if err != nil {
			http.Error(w, "bad body", http.StatusBadRequest)
			return
		}
		if secret != "" {
			if err := VerifyWebhook(secret, req.Header, body, 0); err != nil {
				http.Error(w, err.Error(), http.StatusUnauthorized)
				return
			}
		}
		e, err := eventOfRecord(body)
		if err != nil || e.JobID == "" {
			http.Error(w, "not a foreman state event", http.StatusBadRequest)
			return
		}
		select {
		case r.events <- e:
			w.WriteHeader(http.StatusNoContent)
		case <-r.done:
			w.WriteHeader(http.StatusGone) // 410: stop delivering to this receiver
		case <-req.Context().Done():
		}
	})
	r.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	if c.onWebhookListen != nil {
		c.onWebhookListen(r.url)
	}
	r.served.Add(1)
	go func() {
		defer r.served.Done()
		_ = r.srv.Serve(ln)
	}()
	return r, nil
}

// close stops the receiver and releases its port.
func (r *receiver) close() {
	r.once.Do(func() {
		close(r.done)
		_ = r.srv.Close()
		r.served.Wait()
	})
}
