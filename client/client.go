package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/gateway/webhook/signature"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// Client talks to one foreman. It is safe for concurrent use. Make one with New: the zero
// Client has no foreman to talk to.
type Client struct {
	base           string
	shown          string // base with its credentials redacted, for messages
	token          string
	hc             *http.Client
	webhookSecret  string
	webhookAddr    string
	webhookAddrSet bool
	webhookURL     string // public base URL of the receiver (WithWebhookURL)
	pollInterval   time.Duration
	pollingOnly    bool
	cancelOnDone   bool
	nc             *nats.Conn
	ownNC          bool
	natsURL        string
	natsOpts       []nats.Option
	// answerTimeout bounds each request of a wait (WithAnswerTimeout); 0: unbounded.
	answerTimeout time.Duration
	// natsSubmitTimeout overrides the bound on a NATS submit's reply (tests).
	natsSubmitTimeout time.Duration
	// statePendingLimit, when > 0, caps the messages nats.go buffers per state
	// subscription (tests; nats.go's default is 512Ki messages / 64 MiB).
	statePendingLimit int
	// natsCheckEvery: how often Watch("") over NATS looks for a closed connection.
	natsCheckEvery time.Duration
	// onWebhookListen lets tests see the receiver URL and the address it listens on.
	onWebhookListen func(url, listenAddr string)
	// webhookBodyWait and webhookIdle override the receiver's bounds (tests; 0: the
	// defaults, receiverBodyWait and receiverIdle).
	webhookBodyWait, webhookIdle time.Duration
	// onQueued gets the job id of a Chat or Generate once it is queued (WithOnQueued).
	onQueued func(jobID string)
	// webhookRefused: foreman's webhook policy refused the receiver's URL once; later
	// Submits start no receiver and poll at once.
	webhookRefused atomic.Bool
	// lingering are Submit's retired webhook receivers still answering 410 (retire);
	// closed marks a Client closed, whose receivers close at once.
	lingerMu  sync.Mutex
	lingering map[*receiver]struct{}
	closed    bool
}

// New returns a client of the foreman at baseURL (e.g. "http://127.0.0.1:8080").
func New(baseURL string, opts ...Option) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		hint := ""
		if !strings.Contains(baseURL, "://") {
			hint = " (begin it with http:// or https://)"
		}
		return nil, fmt.Errorf("client: base URL %q is not an absolute http(s) URL%s", ollama.RedactURL(baseURL), hint)
	}
	if err := ollama.CheckUserinfo(u, baseURL); err != nil {
		return nil, fmt.Errorf("client: base URL %q: %w", ollama.RedactURL(baseURL), err)
	}
	c := &Client{
		base:         strings.TrimRight(baseURL, "/"),
		shown:        ollama.RedactURL(strings.TrimRight(baseURL, "/")),
		hc:           &http.Client{},
		webhookAddr:  "127.0.0.1:0",
		pollInterval: time.Second,

		natsCheckEvery: natsCheckEvery,
	}
	for _, o := range opts {
		if o != nil { // an option chosen conditionally and left unset
			o(c)
		}
	}
	if c.hc == nil {
		c.hc = &http.Client{}
	}
	if strings.ContainsFunc(c.token, func(r rune) bool { return (r < ' ' && r != '\t') || r == 0x7f }) {
		// No request could carry it: every call would fail before it left, as a
		// *ConnectionError, and foreman would look unreachable. The token is not quoted.
		return nil, errors.New("client: WithToken: the token holds a control character (a newline read from a file?), which no HTTP header carries")
	}
	if c.webhookSecret != "" {
		// A secret that does not decode would fail every delivery's check (401), and the
		// waits would fall back to the backstop poll without a word.
		if _, err := signature.Key(c.webhookSecret); err != nil {
			return nil, fmt.Errorf("client: WithWebhookSecret: %w", err)
		}
	}
	if c.webhookURL != "" {
		w, err := url.Parse(c.webhookURL)
		if err != nil || (w.Scheme != "http" && w.Scheme != "https") || w.Host == "" || w.RawQuery != "" || w.Fragment != "" {
			return nil, fmt.Errorf("client: webhook URL %q is not an absolute http(s) URL without query", ollama.RedactURL(c.webhookURL))
		}
		if !c.webhookAddrSet {
			return nil, errors.New("client: WithWebhookURL needs WithWebhookListenAddr: the port foreman's calls arrive on")
		}
		c.webhookURL = strings.TrimRight(c.webhookURL, "/")
	}
	if c.natsURL != "" && c.nc == nil {
		if err := ollama.CheckURLList(c.natsURL); err != nil {
			return nil, fmt.Errorf("client: NATS URL %s: %w", ollama.RedactURLs(c.natsURL), err)
		}
		nc, err := nats.Connect(c.natsURL, append([]nats.Option{nats.Name("foreman-client")}, c.natsOpts...)...)
		if err != nil {
			return nil, fmt.Errorf("client: connect to NATS %s: %w", ollama.RedactURLs(c.natsURL), ollama.RedactError(err, c.natsURL))
		}
		c.nc, c.ownNC = nc, true
	}
	return c, nil
}

// Close releases the NATS connection the client opened (WithNATSURL), and the ports of
// Submit's webhook receivers that still answer foreman's last deliveries. Safe to call
// twice.
func (c *Client) Close() error {
	c.closeLingering(true)
	if c.ownNC && c.nc != nil {
		c.nc.Close()
	}
	return nil
}

// URL is the foreman base URL the client talks to.
func (c *Client) URL() string { return c.base }

// ShownURL is URL with any credentials in it redacted, for showing.
func (c *Client) ShownURL() string { return c.shown }

// NATS is the NATS connection the client uses, or nil.
func (c *Client) NATS() *nats.Conn { return c.nc }

// request sends one HTTP request; a non-2xx answer becomes an *APIError, a transport
// failure before the request was sent whole a *ConnectionError, and one after it (the
// connection broke before the answer began) a *CutShortError. The caller closes the body.
func (c *Client) request(ctx context.Context, method, path string, body []byte, hdr http.Header) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	var wrote atomic.Bool
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		WroteRequest: func(i httptrace.WroteRequestInfo) { wrote.Store(i.Err == nil) },
	}))
	resp, err := c.hc.Do(req)
	if err != nil {
		switch {
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case wrote.Load() && !isTimeout(err):
			// foreman had the whole request: its job may have been made.
			return nil, &CutShortError{URL: c.shown, Err: fmt.Errorf("no answer: %w", transportCause(err))}
		}
		return nil, &ConnectionError{URL: c.shown, Err: transportCause(err)}
	}
	if resp.Request != nil && resp.Request.Method != method {
		// A 301, 302 or 303 (a proxy sending http to https, say): net/http asked the new
		// address with a GET and no body, so this answer is not the call's.
		resp.Body.Close()
		return nil, fmt.Errorf("client: %s %s was redirected to %s, which was then asked with a %s and no body: give the client the address foreman answers at",
			method, c.shown+path, ollama.RedactURL(resp.Request.URL.String()), resp.Request.Method)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		return nil, apiError(resp)
	}
	return resp, nil
}

// transportCause strips url.Error's "Post "http://...": " prefix, which ConnectionError
// already says, down to e.g. "dial tcp 127.0.0.1:1: connect: connection refused".
func transportCause(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func apiError(resp *http.Response) error {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var e struct {
		Error string `json:"error"`
	}
	msg, raw := strings.TrimSpace(string(data)), true
	if json.Unmarshal(data, &e) == nil && e.Error != "" {
		msg, raw = e.Error, false
	}
	return &APIError{Status: resp.StatusCode, Message: msg, RetryAfter: retryAfter(resp.Header, time.Now()), Raw: raw}
}

// doJSON sends in (when non-nil) as JSON and decodes the answer, of at most limit bytes,
// into out (when non-nil).
func (c *Client) doJSON(ctx context.Context, method, path string, in, out any, limit int) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return fmt.Errorf("client: encode request: %w", err)
		}
	}
	resp, err := c.request(ctx, method, path, body, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, int64(limit)))
		return nil
	}
	data, err := c.readAnswer(ctx, resp.Body, method, path, limit)
	if err != nil {
		return err
	}
	return c.decodeObject(resp, data, out, method, path)
}

// decodeObject decodes resp's answer data, which must be a JSON object: anything else (an
// HTML page, plain text, null, which would leave out as it was) is no answer foreman
// gives, but a *ForeignAnswerError.
func (c *Client) decodeObject(resp *http.Response, data []byte, out any, method, path string) error {
	if t := bytes.TrimSpace(data); len(t) == 0 || t[0] != '{' {
		return c.foreignAnswer(resp, data, method, path)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("client: decode %s %s: %w", method, path, err)
	}
	return nil
}

// readAnswer reads a whole answer of at most limit bytes; a larger one is an error
// matching ErrAnswerTooLarge, read no further than the limit, and one whose connection
// broke a *CutShortError (ctx.Err() once ctx has ended; the http.Client's own timeout
// stays a timeout).
func (c *Client) readAnswer(ctx context.Context, r io.Reader, method, path string, limit int) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, int64(limit)+1))
	if err != nil {
		return nil, c.cutShort(ctx, fmt.Errorf("read %s %s: %w", method, path, err))
	}
	if len(data) > limit {
		return nil, tooLarge(method, path, limit)
	}
	return data, nil
}

// cutShort is the error of an answer whose reading failed with err: ctx.Err() once ctx
// has ended, err itself (prefixed) for the http.Client's own timeout, a *CutShortError
// otherwise.
func (c *Client) cutShort(ctx context.Context, err error) error {
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case isTimeout(err):
		return fmt.Errorf("client: %w", err)
	}
	return &CutShortError{URL: c.shown, Err: err}
}

// isTimeout reports whether err is a network timeout (an http.Client's Timeout, say).
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// tooLarge is the error of an answer to method path that passed limit bytes.
func tooLarge(method, path string, limit int) error {
	return fmt.Errorf("client: %s %s: %w (more than %d bytes)", method, path, ErrAnswerTooLarge, limit)
}

// loopback reports whether the base URL names this machine, where a receiver on
// 127.0.0.1 is reachable by foreman.
func (c *Client) loopback() bool {
	u, err := url.Parse(c.base)
	if err != nil {
		return false
	}
	return isLoopbackHost(u.Hostname())
}

// isLoopbackHost reports whether host ("localhost" or an IP) names this machine only.
func isLoopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}
