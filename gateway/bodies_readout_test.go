package gateway

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// sendWhole sends POST path with body on a connection of its own, declared or chunked (in
// pieces of 64 KiB, the way curl sends a body it reads from a pipe), with the header lines
// given, and reads the answer only once the whole body is written: many clients do not
// watch for an answer while they send. A failed write is returned, the answer then nil.
func (b *testBundle) sendWhole(t *testing.T, path string, body []byte, chunked bool, header ...string) (*http.Response, []byte, error) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(b.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(60 * time.Second)) // a broken build must not hang the test
	w := bufio.NewWriterSize(conn, 64<<10)
	fmt.Fprintf(w, "POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n", path)
	for _, h := range header {
		fmt.Fprintf(w, "%s\r\n", h)
	}
	if !chunked {
		fmt.Fprintf(w, "Content-Length: %d\r\n\r\n", len(body))
		w.Write(body)
	} else {
		fmt.Fprint(w, "Transfer-Encoding: chunked\r\n\r\n")
		for rest := body; len(rest) > 0; {
			piece := rest[:min(len(rest), 64<<10)]
			rest = rest[len(piece):]
			fmt.Fprintf(w, "%x\r\n%s\r\n", len(piece), piece)
		}
		fmt.Fprint(w, "0\r\n\r\n")
	}
	if err := w.Flush(); err != nil {
		return nil, nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer once the body was sent: %v", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("answer's body: %v", err)
	}
	return resp, data, nil
}

// A body refused while its client still sends it (the budget ran out part way, it
// was refused before it was read, or it is over the body limit) gets its answer, not a
// reset: foreman reads out the rest of the body after the answer. The bodies are far
// larger than what the kernel buffers for a connection, so a client writing all of its
// body before it reads fails its write if the rest is left unread.
func TestBodyRefusalReachesAClientStillSending(t *testing.T) {
	t.Parallel()
	const limit = 16 << 20
	for _, c := range []struct {
		name    string
		budget  int64 // 0: the default; else a 1 MiB body holds part of it all along
		path    string
		size    int
		chunked bool
		status  int
	}{
		// The 1 MiB held and the refused body's first MiB fill 2 MiB: its next growth
		// does not fit.
		{"budget, declared, part way", 2 << 20, "/api/chat", limit, false, http.StatusServiceUnavailable},
		{"budget, chunked, part way", 2 << 20, "/jobs", limit, true, http.StatusServiceUnavailable},
		// The refused body's first MiB does not fit beside the 1 MiB held, and the
		// client, not asking to wait (Expect: 100-continue), sends it anyway.
		{"budget, declared, before it is read", 3 << 19, "/api/chat", limit, false, http.StatusServiceUnavailable},
		{"too large, declared", 0, "/api/chat", limit + limit/2, false, http.StatusRequestEntityTooLarge},
		{"too large, chunked", 0, "/jobs", 2*limit - 2<<20, true, http.StatusRequestEntityTooLarge},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			b := newBudgetBundle(t, limit, c.budget, nil)
			ctx := testCtx(t, 60*time.Second)
			finish, held := func() {}, (<-chan rawResponse)(nil)
			if c.budget != 0 {
				finish, held = stalledPost(t, ctx, b.testBundle, "/api/chat", chatOf(t, bodyRoomAhead), bodyRoomAhead-100, true)
				waitHeld(t, b.testBundle, bodyRoomAhead)
			}

			resp, body, err := b.sendWhole(t, c.path, chatOf(t, c.size), c.chunked)
			if err != nil {
				t.Fatalf("the client could not send its body: %v", err)
			}
			wantError(t, resp, body, c.status, map[int]string{
				http.StatusServiceUnavailable:    "too many request bodies in flight",
				http.StatusRequestEntityTooLarge: "request body too large",
			}[c.status])
			if c.status == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") == "" {
				t.Error("no Retry-After")
			}
			if !resp.Close {
				t.Error("the connection of a refused body stays open")
			}

			finish()
			if held != nil {
				if a := <-held; a.Status != http.StatusOK {
					t.Fatalf("the body that held the budget: %d %s", a.Status, a.Body)
				}
			}
			waitAllGivenBack(t, b.testBundle, 0)
		})
	}
}

// What is read out of a body over the limit is bounded: a body declared longer than
// twice the limit is not read at all, a chunked one is read to about twice the limit;
// then the connection is closed on it, and a client still sending (64 times the limit)
// has its write fail. A client that asked to wait (Expect: 100-continue) and was refused
// before it sent anything has nothing read out: the connection closes after the answer.
func TestBodyRefusalReadOutIsBounded(t *testing.T) {
	t.Parallel()
	const limit = 1 << 20
	huge := bytes.Repeat([]byte("x"), 64<<20)
	for name, chunked := range map[string]bool{"declared": false, "chunked": true} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := newBudgetBundle(t, limit, 0, nil)
			if _, _, err := b.sendWhole(t, "/jobs", huge, chunked); err == nil {
				t.Fatalf("a body of %d bytes was read out whole, past twice the limit of %d", len(huge), limit)
			}
		})
	}
	for _, c := range []struct {
		name                  string
		maxBody, budget, held int64
	}{
		{"waiting to send", limit, limit, bodyRoomAhead},
		// The budget has room for the body's first read, not for its first MiB.
		{"waiting to send, room for a first read only", 4 << 20, 2 << 20, 3 << 19},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			waitToSend(t, c.maxBody, c.budget, c.held)
		})
	}
}

// waitToSend checks that a body sent with "Expect: 100-continue" is refused before any
// of it is sent while another body holds held bytes of budget.
func waitToSend(t *testing.T, maxBody, budget, held int64) {
	t.Helper()
	b := newBudgetBundle(t, maxBody, budget, nil)
	ctx := testCtx(t, 60*time.Second)
	finish, holder := stalledPost(t, ctx, b.testBundle, "/api/chat", chatOf(t, int(held)), int(held)-100, true)
	// Exactly held: while its buffer grows the holder holds more for a moment.
	eventually(t, 30*time.Second, fmt.Sprintf("the gateway holds %d body bytes", held), func() bool {
		n, _ := bodyGauges(t, b.testBundle)
		return n == float64(held)
	})
	conn := b.rawHead(t, http.MethodPost, "/api/chat", fmt.Sprintf("Expect: 100-continue\r\nContent-Length: %d", testPart))
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second)) // a broken build must not hang the test
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	wantBudgetRefusal(t, resp, body, true)
	if n, err := br.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("after the answer, the connection gave %d bytes, %v; want it closed (EOF)", n, err)
	}
	finish()
	if a := <-holder; a.Status != http.StatusOK {
		t.Fatalf("the body that held the budget: %d %s", a.Status, a.Body)
	}
}
