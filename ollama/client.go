package ollama

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Client talks to the target Ollama. *HTTPClient implements it; tests may fake it.
type Client interface {
	// Do performs a raw pass-through request and returns the upstream response
	// unmodified (any status); the caller relays status, headers and body and
	// closes the body. path is the escaped path, with after a "?" the raw query, which
	// goes to the target as given. A transport failure is a *ConnectionError; a path no
	// request may carry is ErrBadPath.
	Do(ctx context.Context, method, path string, header http.Header, body io.Reader) (*http.Response, error)
	// Stream POSTs body to path and calls fn once per frame as the target
	// produces it: one NDJSON line (with its "\n") for application/x-ndjson,
	// one SSE event (all its lines and the blank line ending it; lines end
	// with LF, CRLF or CR, as an SSE client reads them; when a CRLF ends an
	// event and its LF comes in a later read than its CR, that LF begins the
	// next frame, or is the last frame alone) for text/event-stream, or the whole
	// body once otherwise. Frames are byte-exact copies of what the target
	// sent, and joined they are the body. A non-2xx status is an
	// *HTTPError, a transport failure or a connection dropped mid-stream a
	// *ConnectionError; an error from fn aborts the request and is returned
	// as is; when ctx ends, ctx.Err() is returned. fn gets a fresh slice per
	// frame and may keep it. It returns the response Content-Type.
	// Options: OnResponse learns the Content-Type before the first frame.
	Stream(ctx context.Context, path string, body []byte, fn func(frame []byte) error, opts ...StreamOption) (contentType string, err error)
	// Tags returns /api/tags parsed and as the raw body.
	Tags(ctx context.Context) (*ListResponse, []byte, error)
	// Ps returns /api/ps parsed and as the raw body.
	Ps(ctx context.Context) (*ProcessResponse, []byte, error)
	// Version returns /api/version.
	Version(ctx context.Context) (*VersionResponse, error)
}

// ClientConfig configures NewClient.
type ClientConfig struct {
	// BaseURL is the target, e.g. "http://127.0.0.1:11434". Required, absolute http or https.
	BaseURL string
	// Token, when set, is sent to the target as "Authorization: Bearer <Token>"
	// (replacing any Authorization header a pass-through caller supplies).
	Token string
	// HTTPClient overrides the default client. It should have no overall
	// Timeout: streams last as long as a generation does. Its redirect policy is
	// replaced: the client never follows a redirect from the target.
	HTTPClient *http.Client
	// ResponseHeaderTimeout bounds the wait for response headers with the
	// default HTTPClient. Ollama sends headers only after loading the model
	// (and, for "stream":false, after the whole generation), so it is long.
	// Zero means 10 minutes; negative means no limit.
	ResponseHeaderTimeout time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

const (
	defaultResponseHeaderTimeout = 10 * time.Minute
	// maxErrorBody bounds how much of a non-2xx body is read for its message.
	maxErrorBody = 1 << 20
)

// MaxMetadataBody bounds the metadata answers read whole from the target: tags, ps and
// version here, the model list of /v1/models in the gateway.
const MaxMetadataBody = 64 << 20

// HTTPClient is the Client for a real Ollama over HTTP.
type HTTPClient struct {
	base   *url.URL
	token  string
	hc     *http.Client
	logger *slog.Logger
}

var _ Client = (*HTTPClient)(nil)

// NewClient validates cfg and returns a client for the target.
func NewClient(cfg ClientConfig) (*HTTPClient, error) {
	if cfg.BaseURL == "" {
		return nil, errors.New("ollama: ClientConfig.BaseURL is required")
	}
	// Errors show the URL redacted: its userinfo may hold a password.
	u, err := url.Parse(cfg.BaseURL)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // url.Error repeats the whole URL
		}
		return nil, fmt.Errorf("ollama: ClientConfig.BaseURL %q: %w", RedactURL(cfg.BaseURL), err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("ollama: ClientConfig.BaseURL %q must be an absolute http or https URL", RedactURL(cfg.BaseURL))
	}
	if err := CheckUserinfo(u, cfg.BaseURL); err != nil {
		return nil, fmt.Errorf("ollama: ClientConfig.BaseURL %q: %w", RedactURL(cfg.BaseURL), err)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		// Requests go to the base URL's path plus the route: a query (a proxy's key) would
		// be dropped without a word.
		return nil, fmt.Errorf("ollama: ClientConfig.BaseURL %q has a query or fragment, which no request would carry: remove it", RedactURL(cfg.BaseURL))
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.ForceQuery = false
	c := &HTTPClient{base: u, token: cfg.Token, hc: cfg.HTTPClient, logger: cfg.Logger}
	if c.logger == nil {
		c.logger = slog.Default()
	}
	if c.hc == nil {
		rht := cfg.ResponseHeaderTimeout
		switch {
		case rht == 0:
			rht = defaultResponseHeaderTimeout
		case rht < 0:
			rht = 0
		}
		c.hc = &http.Client{Transport: newTransport(rht)}
	}
	hc := *c.hc
	hc.CheckRedirect = noRedirects
	c.hc = &hc
	return c, nil
}

// noRedirects makes a redirect from the target its answer. foreman is a proxy: following
// one would send the target (or wherever it points) a request the client never made, on
// a path foreman did not route (a HEAD on a blob became GET /api/tags); the client gets
// the redirect as the target sent it and decides.
func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

func newTransport(responseHeaderTimeout time.Duration) *http.Transport {
	d := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           d.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          32,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: 1 * time.Second,
		ResponseHeaderTimeout: responseHeaderTimeout,
	}
}

// BaseURL returns the target's base URL with any userinfo redacted (see RedactURL).
func (c *HTTPClient) BaseURL() string { return redacted(c.base) }

// CloseIdleConnections closes the connections kept open for reuse, as a client no longer
// used should: each holds a socket (and its transport's goroutines) for up to 90 s.
// Requests under way keep theirs.
func (c *HTTPClient) CloseIdleConnections() { c.hc.CloseIdleConnections() }

// hopHeaders are connection-level headers a proxy must not forward (RFC 9110 §7.6.1).
var hopHeaders = []string{
	"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// newRequest builds a request for path, an escaped path with, after a "?", a raw query.
// The query is sent as given, never parsed: Go's server leaves a "#" in a request's query
// (a request has no fragment), and parsed, it would start one, cutting the query there,
// or failing on a bad escape after it.
func (c *HTTPClient) newRequest(ctx context.Context, method, path string, header http.Header, body io.Reader) (*http.Request, error) {
	escaped, rawQuery, _ := strings.Cut(path, "?")
	ref, err := url.Parse(escaped)
	if err != nil {
		return nil, fmt.Errorf("%w %q: %w", ErrBadPath, path, err)
	}
	if strings.Contains(escaped, "#") || strings.ContainsFunc(rawQuery, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return nil, fmt.Errorf("%w %q: a fragment, a space or a control character", ErrBadPath, path)
	}
	// The escaped form goes too: rebuilt from the decoded path alone, an escaped "/" in
	// a segment ("..%2F") would reach the target as a real one ("../").
	u := *c.base
	u.Path = c.base.Path + "/" + strings.TrimLeft(ref.Path, "/")
	u.RawPath = c.base.EscapedPath() + "/" + strings.TrimLeft(ref.EscapedPath(), "/")
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return nil, fmt.Errorf("ollama: new request: %w", err)
	}
	req.URL.RawQuery = rawQuery
	if header != nil {
		req.Header = header.Clone()
		for _, h := range hopHeaders {
			req.Header.Del(h)
		}
		req.Header.Del("Host")
		req.Header.Del("Content-Length")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	return req, nil
}

// transportError turns a failure of the round trip or body read into the
// caller's context error when the context ended, else a *ConnectionError.
func (c *HTTPClient) transportError(ctx context.Context, op string, req *http.Request, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return ctxErr
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	// The URL may carry a password for the target (basic auth): it never goes into an
	// error or a log line, which end up in 502 bodies, job records and webhooks.
	shown := redacted(req.URL)
	c.logger.DebugContext(ctx, "ollama connection error", slog.String("op", op), slog.String("url", shown), slog.Any("err", err))
	return &ConnectionError{Op: op, URL: shown, Err: err}
}

// Do implements Client.
func (c *HTTPClient) Do(ctx context.Context, method, path string, header http.Header, body io.Reader) (*http.Response, error) {
	req, err := c.newRequest(ctx, method, path, header, body)
	if err != nil {
		return nil, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		// The path's query may hold a key, as the base URL's may: the error names the
		// route only.
		route, _, _ := strings.Cut(path, "?")
		return nil, c.transportError(ctx, method+" "+route, req, err)
	}
	return resp, nil
}

// getJSON GETs path, requires 2xx and decodes into v; it returns the raw body.
func (c *HTTPClient) getJSON(ctx context.Context, path string, v any) ([]byte, error) {
	req, err := c.newRequest(ctx, http.MethodGet, path, nil, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, c.transportError(ctx, "GET "+path, req, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 == 3 {
		// Ollama never redirects these routes: whatever answers is not Ollama.
		return nil, badAnswer("GET "+path, fmt.Errorf("redirect %d to %q", resp.StatusCode, resp.Header.Get("Location")))
	}
	if resp.StatusCode/100 != 2 {
		return nil, readHTTPError(resp)
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, MaxMetadataBody))
	if err != nil {
		return nil, c.transportError(ctx, "read "+path, req, err)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return nil, badAnswer("GET "+path, fmt.Errorf("not JSON (Content-Type %q): %w", resp.Header.Get("Content-Type"), err))
	}
	return raw, nil
}

// Tags implements Client.
func (c *HTTPClient) Tags(ctx context.Context) (*ListResponse, []byte, error) {
	var v ListResponse
	raw, err := c.getJSON(ctx, "/api/tags", &v)
	if err != nil {
		return nil, nil, err
	}
	return &v, raw, nil
}

// Ps implements Client.
func (c *HTTPClient) Ps(ctx context.Context) (*ProcessResponse, []byte, error) {
	var v ProcessResponse
	raw, err := c.getJSON(ctx, "/api/ps", &v)
	if err != nil {
		return nil, nil, err
	}
	return &v, raw, nil
}

// Version implements Client.
func (c *HTTPClient) Version(ctx context.Context) (*VersionResponse, error) {
	var v VersionResponse
	if _, err := c.getJSON(ctx, "/api/version", &v); err != nil {
		return nil, err
	}
	return &v, nil
}

// readHTTPError reads a non-2xx response into an *HTTPError.
func readHTTPError(resp *http.Response) *HTTPError {
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	return &HTTPError{StatusCode: resp.StatusCode, Message: errorMessage(raw)}
}

// errorMessage extracts Ollama's {"error": "..."} text, or the trimmed body.
func errorMessage(raw []byte) string {
	var e ErrorResponse
	if err := json.Unmarshal(raw, &e); err == nil && e.Error != "" {
		return e.Error
	}
	text := strings.TrimSpace(string(raw))
	// A proxy's error page (nginx, Caddy, a load balancer): its title says it, where the
	// page would carry its markup into the job's error and the logs.
	if strings.HasPrefix(text, "<") {
		if _, rest, ok := cutFold(text, "<title>"); ok {
			if title, _, ok := cutFold(rest, "</title>"); ok && strings.TrimSpace(title) != "" {
				return strings.Join(strings.Fields(html.UnescapeString(title)), " ")
			}
		}
	}
	return text
}

// cutFold is strings.Cut with sep (lower case ASCII) matched in any letter case. Only
// ASCII letters are folded, so that positions in the folded string are the same in s:
// strings.ToLower changes the length of invalid UTF-8 and of letters such as 'İ'.
func cutFold(s, sep string) (before, after string, found bool) {
	folded := []byte(s)
	for i, c := range folded {
		if 'A' <= c && c <= 'Z' {
			folded[i] = c + 'a' - 'A'
		}
	}
	if i := strings.Index(string(folded), sep); i >= 0 {
		return s[:i], s[i+len(sep):], true
	}
	return s, "", false
}
