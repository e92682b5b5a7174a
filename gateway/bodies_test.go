package gateway

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// The budget of bodies in flight in these tests: 1 MiB, the body limit too. Two bodies of
// 700 KB do not fit in it at once.
const (
	testBudget = 1 << 20
	testPart   = 700_000
)

// newBudgetBundle is a gateway with a worker whose bodies are bounded at maxBody each and
// budget together; adjust, when set, changes the rest of its Config.
func newBudgetBundle(t *testing.T, maxBody, budget int64, adjust func(*Config), opts ...bundleOption) *queuedBundle {
	t.Helper()
	return newQueuedBundle(t, nil, append(opts, withGateway(func(c *Config) {
		c.MaxBodyBytes, c.MaxBodyBytesInFlight = maxBody, budget
		if adjust != nil {
			adjust(c)
		}
	}))...)
}

// paddedBody is a JSON object of exactly n bytes: head (an object's opening members,
// ending with a comma) and a "pad" string member filling the rest.
func paddedBody(t *testing.T, head string, n int) []byte {
	t.Helper()
	body := head + `"pad":"` + strings.Repeat("x", n-len(head)-len(`"pad":""}`)) + `"}`
	if len(body) != n {
		t.Fatalf("padded body of %d bytes, want %d", len(body), n)
	}
	return []byte(body)
}

// chatOf is a non-streamed chat body for tiny-a of exactly n bytes.
func chatOf(t *testing.T, n int) []byte {
	return paddedBody(t, `{"model":"tiny-a","stream":false,"messages":[{"role":"user","content":"hi"}],`, n)
}

// bodyGauges reads foreman_request_body_bytes_in_flight and its peak from /metrics (-1
// when absent).
func bodyGauges(t *testing.T, b *testBundle) (inFlight, peak float64) {
	t.Helper()
	fams := scrape(t, b)
	return metricValue(fams, "foreman_request_body_bytes_in_flight"), metricValue(fams, "foreman_request_body_bytes_in_flight_peak")
}

// waitHeld waits until the gateway holds at least n body bytes.
func waitHeld(t *testing.T, b *testBundle, n float64) {
	t.Helper()
	eventually(t, 30*time.Second, fmt.Sprintf("the gateway holds %.0f body bytes", n), func() bool {
		held, _ := bodyGauges(t, b)
		return held >= n
	})
}

// waitAllGivenBack waits until the gateway holds no body bytes, and checks that it held
// at least peak at some time.
func waitAllGivenBack(t *testing.T, b *testBundle, peak float64) {
	t.Helper()
	eventually(t, 30*time.Second, "every body byte given back", func() bool {
		held, _ := bodyGauges(t, b)
		return held == 0
	})
	if _, p := bodyGauges(t, b); p < peak {
		t.Errorf("peak of bodies in flight %.0f, want at least %.0f: the body was never counted", p, peak)
	}
}

// stalledPost sends POST path with body through a pipe: the first part bytes at once,
// the rest once finish is called. With declared the request carries Content-Length, else
// it is chunked; hdr holds header name/value pairs. The response arrives on the returned
// channel.
func stalledPost(t *testing.T, ctx context.Context, b *testBundle, path string, body []byte, part int, declared bool, hdr ...string) (finish func(), resp <-chan rawResponse) {
	t.Helper()
	pr, pw := io.Pipe()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, b.URL+path, pr)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	if declared {
		req.ContentLength = int64(len(body))
	}
	rest := make(chan struct{})
	go func() {
		if _, err := pw.Write(body[:part]); err != nil {
			return
		}
		select {
		case <-rest:
			_, err := pw.Write(body[part:])
			pw.CloseWithError(err)
		case <-ctx.Done():
			pw.CloseWithError(ctx.Err())
		}
	}()
	out := make(chan rawResponse, 1)
	go func() {
		r, err := http.DefaultClient.Do(req)
		if err != nil {
			out <- rawResponse{Body: []byte(err.Error())}
			return
		}
		defer r.Body.Close()
		data, _ := io.ReadAll(r.Body)
		out <- rawResponse{Status: r.StatusCode, Header: r.Header, Body: data}
	}()
	return func() { close(rest) }, out
}

// expectPost sends body with "Expect: 100-continue", as curl does for large bodies: the
// body goes out only once the gateway reads it, so a refusal before that comes back on a
// connection with nothing unread.
func expectPost(t *testing.T, ctx context.Context, b *testBundle, path string, body []byte) (*http.Response, []byte) {
	t.Helper()
	tr := &http.Transport{ExpectContinueTimeout: time.Minute}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, b.URL+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Expect", "100-continue")
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("POST %s: read: %v", path, err)
	}
	return resp, data
}

// rawHead opens a connection to the bundle and writes a request's head with the header
// line given (no Content-Length); the test writes the body.
func (b *testBundle) rawHead(t *testing.T, method, path, header string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(b.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := fmt.Fprintf(conn, "%s %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n%s\r\n\r\n", method, path, header); err != nil {
		t.Fatal(err)
	}
	return conn
}

// wantBudgetRefusal checks a 503 for want of budget: foreman's error shape, Retry-After,
// and the connection closed when the body was left unread.
func wantBudgetRefusal(t *testing.T, resp *http.Response, body []byte, unread bool) {
	t.Helper()
	wantError(t, resp, body, http.StatusServiceUnavailable, "too many request bodies in flight")
	if resp.Header.Get("Retry-After") == "" {
		t.Error("no Retry-After")
	}
	if unread && !resp.Close {
		t.Error("the connection stays open with the body unread")
	}
}

// A body that would take the bodies in flight past their budget gets 503 while another
// holds most of it; once that one is done, the next is served, and every byte is given
// back. A body declaring its length takes it before it is read, a chunked one as it
// arrives.
func TestBodyBudgetRefusesABodyOverIt(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name     string
		path     string
		declared bool
		status   int
	}{
		{"declared, sync chat", "/api/chat", true, http.StatusOK},
		{"chunked, async job", "/jobs", false, http.StatusAccepted},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			b := newBudgetBundle(t, testBudget, testBudget, nil)
			ctx := testCtx(t, 60*time.Second)
			finish, aDone := stalledPost(t, ctx, b.testBundle, c.path, chatOf(t, 750_000), testPart, c.declared)
			waitHeld(t, b.testBundle, testPart)

			resp, body := expectPost(t, ctx, b.testBundle, c.path, chatOf(t, testPart))
			wantBudgetRefusal(t, resp, body, true)
			if got := metricValue(scrape(t, b.testBundle), "foreman_requests_refused_total", "reason", "body_budget"); got != 1 {
				t.Errorf("foreman_requests_refused_total{reason=body_budget} = %v, want 1", got)
			}

			finish()
			if a := <-aDone; a.Status != c.status {
				t.Fatalf("the body that held the budget: %d %s", a.Status, a.Body)
			}
			if r := post(t, ctx, b.URL, c.path, chatOf(t, testPart)); r.Status != c.status {
				t.Fatalf("the next body, with the budget free: %d %s", r.Status, r.Body)
			}
			waitAllGivenBack(t, b.testBundle, testPart)
			if got := metricValue(scrape(t, b.testBundle), "foreman_request_body_bytes_in_flight_limit"); got != testBudget {
				t.Errorf("foreman_request_body_bytes_in_flight_limit = %v, want %d", got, testBudget)
			}
		})
	}
}

// A zstd body counts with what it inflates to: a small compressed body that would
// inflate past the budget while another body holds it is refused; alone, one inflating
// to nearly the body limit (more than the budget leaves beside its compressed form) is
// served.
func TestBodyBudgetCountsAZstdBodyInflated(t *testing.T) {
	t.Parallel()
	b := newBudgetBundle(t, testBudget, testBudget, nil)
	ctx := testCtx(t, 60*time.Second)
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	responses := func(n int) []byte {
		return enc.EncodeAll(paddedBody(t, `{"model":"tiny-a","input":"hi",`, n), nil)
	}
	bomb := responses(testPart)
	if len(bomb) > 4<<10 {
		t.Fatalf("the compressed body is %d bytes", len(bomb))
	}

	finish, aDone := stalledPost(t, ctx, b.testBundle, "/api/chat", chatOf(t, 750_000), testPart, true)
	waitHeld(t, b.testBundle, testPart)
	resp, body := b.request(t, http.MethodPost, "/v1/responses", bomb, "Content-Encoding", "zstd")
	wantBudgetRefusal(t, resp, body, false)
	finish()
	if a := <-aDone; a.Status != http.StatusOK {
		t.Fatalf("the body that held the budget: %d %s", a.Status, a.Body)
	}

	for _, n := range []int{testPart, 1_000_000} {
		resp, body = b.request(t, http.MethodPost, "/v1/responses", responses(n), "Content-Encoding", "zstd")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("a compressed body inflating to %d bytes, alone: %d %s", n, resp.StatusCode, body)
		}
	}
	waitAllGivenBack(t, b.testBundle, 1_000_000)
}

// A body larger than the whole budget, within the body limit, is served when no other
// body is held.
func TestBodyBudgetServesALargerBodyAlone(t *testing.T) {
	t.Parallel()
	b := newBudgetBundle(t, testBudget, 64<<10, nil)
	ctx := testCtx(t, 60*time.Second)
	if r := post(t, ctx, b.URL, "/api/chat", chatOf(t, 900_000)); r.Status != http.StatusOK {
		t.Fatalf("%d %s", r.Status, r.Body)
	}
	waitAllGivenBack(t, b.testBundle, 900_000)
}

// A body's bytes go back to the budget as soon as it is no longer held, and on every
// way a read ends: a sync job's once the job is stored, while its answer is awaited; a
// pass-through's once the target has it, while its answer still streams; a body too slow
// (408), too large (413), cut off by the client leaving, or that is no request (400).
func TestBodyBudgetGivenBack(t *testing.T) {
	t.Parallel()
	t.Run("sync job waiting", func(t *testing.T) {
		t.Parallel()
		b := newBudgetBundle(t, testBudget, testBudget, nil)
		ctx := testCtx(t, 60*time.Second)
		release := b.Fake.Hold("tiny-a")
		body, done := chatOf(t, testPart), make(chan rawResponse, 1)
		go func() { done <- post(t, ctx, b.URL, "/api/chat", body) }()
		defer func() { release(); <-done }() // post may report to t: it ends before the test does
		if err := b.Fake.WaitInFlight(ctx, 1); err != nil {
			t.Fatalf("the job never reached the target: %v", err)
		}
		waitAllGivenBack(t, b.testBundle, testPart)
		release()
		r := <-done
		done <- r // for the deferred receive
		if r.Status != http.StatusOK {
			t.Fatalf("%d %s", r.Status, r.Body)
		}
	})
	t.Run("too slow", func(t *testing.T) {
		t.Parallel()
		b := newBudgetBundle(t, testBudget, testBudget, func(c *Config) { c.BodyReadTimeout = 200 * time.Millisecond })
		conn := b.rawRequest(t, http.MethodPost, "/api/chat", testPart, `{"model":`)
		resp, body := readResponse(t, conn)
		wantError(t, resp, body, http.StatusRequestTimeout, "request body not received within 200ms")
		waitAllGivenBack(t, b.testBundle, bodyFirstRead) // taken before the read
	})
	t.Run("too large", func(t *testing.T) {
		t.Parallel()
		b := newBudgetBundle(t, testBudget, testBudget, nil)
		// Declared too large: refused before a byte is taken.
		conn := b.rawRequest(t, http.MethodPost, "/api/chat", testBudget+1, "")
		resp, body := readResponse(t, conn)
		wantError(t, resp, body, http.StatusRequestEntityTooLarge, "request body too large")
		if held, peak := bodyGauges(t, b.testBundle); held != 0 || peak != 0 {
			t.Errorf("a body declared too large took bytes: %v held, peak %v", held, peak)
		}
		// Chunked: read up to the limit, then refused. Only the chunk's data is sent, so
		// nothing is left unread when the gateway closes the connection.
		conn = b.rawHead(t, http.MethodPost, "/jobs", "Transfer-Encoding: chunked")
		fmt.Fprintf(conn, "%x\r\n%s", testBudget+1, strings.Repeat("x", testBudget+1))
		resp, body = readResponse(t, conn)
		wantError(t, resp, body, http.StatusRequestEntityTooLarge, "request body too large")
		waitAllGivenBack(t, b.testBundle, testBudget)
	})
	t.Run("client gone", func(t *testing.T) {
		t.Parallel()
		b := newBudgetBundle(t, testBudget, testBudget, nil)
		conn := b.rawRequest(t, http.MethodPost, "/jobs", testPart, `{"model":"tiny-a",`)
		waitHeld(t, b.testBundle, bodyFirstRead)
		conn.Close()
		waitAllGivenBack(t, b.testBundle, bodyFirstRead)
	})
	t.Run("not a request", func(t *testing.T) {
		t.Parallel()
		b := newBudgetBundle(t, testBudget, testBudget, nil)
		ctx := testCtx(t, 30*time.Second)
		for _, path := range []string{"/api/chat", "/jobs", "/api/embed", "/api/pull"} {
			// Cut short, it is no JSON object (one followed by more would be read as
			// Ollama reads it, the object alone).
			body := chatOf(t, testPart)
			r := post(t, ctx, b.URL, path, body[:len(body)-1])
			if r.Status != http.StatusBadRequest {
				t.Errorf("%s: %d %s, want 400", path, r.Status, r.Body)
			}
		}
		if r := post(t, ctx, b.URL, "/api/chat", paddedBody(t, `{"model":"nope","messages":[],`, testPart)); r.Status != http.StatusNotFound {
			t.Errorf("unknown model: %d %s, want 404", r.Status, r.Body)
		}
		waitAllGivenBack(t, b.testBundle, testPart)
	})
	t.Run("pass-through", func(t *testing.T) {
		t.Parallel()
		b := newBudgetBundle(t, testBudget, testBudget, nil, withFake(ollamatest.WithGatePull()))
		ctx := testCtx(t, 30*time.Second)
		stepped := make(chan error, 1)
		go func() { stepped <- b.Fake.PullStep(ctx) }() // the fake sends headers with line 1
		resp := b.send(t, http.MethodPost, "/api/pull", paddedBody(t, `{"model":"fresh-model",`, testPart))
		defer resp.Body.Close()
		if err := <-stepped; err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(resp.Body).ReadBytes('\n')
		if err != nil || !bytes.Contains(line, []byte("pulling manifest")) {
			t.Fatalf("first progress line %q: %v", line, err)
		}
		// The target has the request: its body is given back while the pull goes on.
		if held, peak := bodyGauges(t, b.testBundle); held != 0 || peak < testPart {
			t.Errorf("while the pull streams: %v body bytes held, peak %v; want 0 held, a peak of at least %d", held, peak, testPart)
		}
		r := post(t, ctx, b.URL, "/api/embed", paddedBody(t, `{"model":"tiny-embed","input":"hi",`, testPart))
		if r.Status != http.StatusOK {
			t.Errorf("embed: %d %s", r.Status, r.Body)
		}
		waitAllGivenBack(t, b.testBundle, testPart)
	})
}

// A body that declares its length takes it from the budget as it arrives, after a first
// read of at most 64 KiB: clients (of one program) that declare much and send little hold
// little, and the others' bodies are served beside them. (With a first step of 1 MiB, four request
// heads declaring 3 MiB held this 4 MiB budget, and every other body was refused.)
func TestBodyBudgetTakesADeclaredBodyAsItArrives(t *testing.T) {
	t.Parallel()
	const budget = 4 << 20
	const heads = 8
	b := newBudgetBundle(t, budget, budget, nil)
	ctx := testCtx(t, 60*time.Second)
	var finishes []func()
	var dones []<-chan rawResponse
	for range heads {
		finish, done := stalledPost(t, ctx, b.testBundle, "/jobs", chatOf(t, 3<<20), 10_000, true, HeaderProgram, "heads")
		finishes, dones = append(finishes, finish), append(dones, done)
	}
	waitHeld(t, b.testBundle, heads*bodyFirstRead)
	if held, _ := bodyGauges(t, b.testBundle); held != heads*bodyFirstRead {
		t.Errorf("%d bodies declaring 3 MiB, 10 KB of each sent, hold %.0f bytes, want a first read of %d each", heads, held, bodyFirstRead)
	}
	// Another program's (ADR-0126: it may hold half of what the heads leave; a 1 MiB
	// body holds 1.5 MiB while its buffer grows the last time).
	if r := post(t, ctx, b.URL, "/jobs", chatOf(t, 1<<20)); r.Status != http.StatusAccepted {
		t.Fatalf("a 1 MiB body beside them: %d %s", r.Status, r.Body)
	}
	for _, finish := range finishes {
		finish()
	}
	for i, done := range dones {
		if a := <-done; a.Status != http.StatusAccepted && a.Status != http.StatusServiceUnavailable {
			t.Errorf("body %d declaring 3 MiB: %d %s", i, a.Status, a.Body)
		}
	}
	waitAllGivenBack(t, b.testBundle, heads*bodyFirstRead)
}

// The budget is a bound on the bytes held at once, and each program's share of it half
// of what the other programs leave (ADR-0126): a hold of a program beside another's gets
// exactly its share, a byte more does not, unless it goes to the only hold holding bytes
// (a body larger than the budget, or than a share, served alone). What fits says, take
// does.
func TestBodyBudgetBounds(t *testing.T) {
	t.Parallel()
	b := &bodyBudget{limit: 100}
	h1, h2, h3 := b.hold("a"), b.hold("b"), b.hold("c")
	if !h1.take(60) {
		t.Fatal("60 of 100 refused to the only hold")
	}
	if !h2.fits(20) || h2.fits(21) {
		t.Errorf("beside another program's 60: fits(20) %v, fits(21) %v; want true, false (half of the 40 left)", h2.fits(20), h2.fits(21))
	}
	if h2.take(21) || b.used.Load() != 60 {
		t.Fatalf("21 more than 60 of 100 taken for another program: %d used", b.used.Load())
	}
	if !h2.take(15) || !h2.take(5) || b.used.Load() != 80 || b.peak.Load() != 80 {
		t.Fatalf("the 20 of b's share refused: %d used, peak %d", b.used.Load(), b.peak.Load())
	}
	if h2b := b.hold("b"); h2b.fits(1) {
		t.Error("a second hold of b got a byte past b's share")
	}
	if !h3.fits(10) || h3.fits(11) || !h3.take(10) {
		t.Error("c beside 80: want exactly half of the 20 left")
	}
	if h1.fits(1) || h1.take(1) {
		t.Error("a byte past a's share (and half the budget) fits a hold that is not alone")
	}
	h2.release()
	h2.release() // safe twice
	h3.release()
	if b.used.Load() != 60 || len(b.held) != 1 {
		t.Fatalf("after the releases: %d used, %d programs holding; want 60 and 1", b.used.Load(), len(b.held))
	}
	if !h1.fits(1000) || !h1.take(1000) {
		t.Error("the only hold holding bytes was refused more")
	}
	if h2.fits(1) || h2.take(1) {
		t.Error("a second hold got bytes past the budget")
	}
	h1.release()
	if b.used.Load() != 0 || b.peak.Load() != 1060 || len(b.held) != 0 {
		t.Errorf("all released: %d used, peak %d, %d programs; want 0, 1060 and none", b.used.Load(), b.peak.Load(), len(b.held))
	}
}

// Unset, a body may be 32 MiB and the bodies in flight four times that (ADR-0048): a body
// declared one byte longer is refused before it is sent, one of 32 MiB is read.
func TestBodyLimitsDefaults(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	const limit = 32 << 20
	if got := metricValue(scrape(t, b), "foreman_request_body_bytes_in_flight_limit"); got != 4*limit {
		t.Errorf("foreman_request_body_bytes_in_flight_limit = %v, want %d", got, 4*limit)
	}
	conn := b.rawHead(t, http.MethodPost, "/jobs", fmt.Sprintf("Expect: 100-continue\r\nContent-Length: %d", limit+1))
	resp, body := readResponse(t, conn)
	wantError(t, resp, body, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body too large (limit %d bytes)", limit))
	// Its client sends nothing: the first read taken from the budget says it is read.
	conn = b.rawRequest(t, http.MethodPost, "/jobs", limit, "")
	waitHeld(t, b, bodyFirstRead)
	conn.Close()
}

// A body buffer grows as bodyGrowth says: doubling from 16 KiB, a quarter more from
// 4 MiB for a body of unknown length, never past the limit and the one byte that shows a
// body longer (unless it is already there); a declared body's last buffer is its length.
func TestBodyGrowth(t *testing.T) {
	t.Parallel()
	const mib = 1 << 20
	for _, c := range []struct {
		c, limit int64
		exact    bool
		want     int64
	}{
		{0, mib, false, 16 << 10},
		{16 << 10, mib, false, 32 << 10},
		{512 << 10, mib, false, mib},
		{mib, mib, false, mib + 1},
		{4 * mib, 32 * mib, false, 5 * mib},
		{30 * mib, 32 * mib, false, 32*mib + 1},
		{32*mib + 1, 32 * mib, false, 32*mib + 2},
		{0, 100_000, true, 16 << 10},
		{64 << 10, 100_000, true, 100_000},
		{8 * mib, 32 * mib, true, 16 * mib},
	} {
		if got := bodyGrowth(c.c, c.limit, c.exact); got != c.want {
			t.Errorf("bodyGrowth(%d, %d, %v) = %d, want %d", c.c, c.limit, c.exact, got, c.want)
		}
	}
}

// A zstd body is decoded under the largest body limit there is (FOREMAN_MAX_BODY of the
// largest int: no limit): the limit and one byte more wrapped negative, and every zstd
// body decoded as empty, a 400 "invalid JSON".
func TestZstdBodyUnderTheLargestBodyLimit(t *testing.T) {
	t.Parallel()
	b := newBudgetBundle(t, math.MaxInt64, math.MaxInt64, nil)
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	body := enc.EncodeAll([]byte(`{"model":"tiny-a","input":"hi"}`), nil)
	if resp, raw := b.request(t, http.MethodPost, "/v1/responses", body, "Content-Encoding", "zstd"); resp.StatusCode != http.StatusOK {
		t.Fatalf("a zstd body under no body limit: %d %s", resp.StatusCode, raw)
	}
}
