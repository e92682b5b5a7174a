package gateway

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// A chat that asks (X-Foreman-Early-Job-Id) gets its job id in a 103 Early Hints while the
// job waits; one that does not ask gets no 1xx at all, as before.
func TestEarlyJobIDOnlyWhenAsked(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	release := b.Fake.Hold("tiny-a")
	defer release()
	for _, ask := range []bool{true, false} {
		var (
			mu    sync.Mutex
			hints []textproto.MIMEHeader
		)
		got := make(chan struct{}, 1)
		ctx := httptrace.WithClientTrace(testCtx(t, 30*time.Second), &httptrace.ClientTrace{
			Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
				mu.Lock()
				defer mu.Unlock()
				if code == http.StatusEarlyHints {
					hints = append(hints, h)
					got <- struct{}{}
				}
				return nil
			},
		})
		req, _ := http.NewRequestWithContext(ctx, "POST", b.URL+"/api/chat",
			strings.NewReader(`{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"stream":false}`))
		if ask {
			req.Header.Set(HeaderEarlyJobID, "1")
		}
		answer := make(chan *http.Response, 1)
		go func() {
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
			}
			answer <- resp
		}()
		if ask {
			select {
			case <-got: // while the job is held: before any answer
			case resp := <-answer:
				t.Fatalf("answer %v before the early job id", resp)
			}
		} else {
			if err := b.Fake.WaitStarted(ctx, "tiny-a", 2); err != nil {
				t.Fatal(err)
			}
		}
		release()
		resp := <-answer
		if resp == nil {
			t.FailNow()
		}
		_, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		id := resp.Header.Get(HeaderJobID)
		mu.Lock()
		switch {
		case resp.StatusCode != http.StatusOK || id == "":
			t.Errorf("asked %v: answer %d, job id %q", ask, resp.StatusCode, id)
		case ask && (len(hints) != 1 || hints[0].Get(HeaderJobID) != id):
			t.Errorf("asked: early hints %v, want one with the answer's job id %s", hints, id)
		case !ask && len(hints) != 0:
			t.Errorf("not asked: got early hints %v", hints)
		}
		mu.Unlock()
		release = b.Fake.Hold("tiny-a")
	}
}

// Only "1" and "true" (any case) ask for the early job id: "0" or "false" must not get a
// 1xx that some clients take for the answer.
func TestWantsEarlyJobID(t *testing.T) {
	t.Parallel()
	for v, want := range map[string]bool{"1": true, "true": true, "TRUE": true, " True ": true,
		"": false, "0": false, "false": false, "FALSE": false, "no": false, "yes": false, "2": false} {
		h := http.Header{}
		if v != "" {
			h.Set(HeaderEarlyJobID, v)
		}
		if got := wantsEarlyJobID(h); got != want {
			t.Errorf("%s: %q: asks %v, want %v", HeaderEarlyJobID, v, got, want)
		}
	}
}

// An HTTP/1.0 client gets no 103 even when it asks: a server must not send a 1xx to one
// (RFC 9110, 15.2). Its answer still names the job.
func TestEarlyJobIDNotForHTTP10(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	u, err := url.Parse(b.URL)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	body := `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"stream":false}`
	fmt.Fprintf(conn, "POST /api/chat HTTP/1.0\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s: 1\r\n\r\n%s",
		u.Host, len(body), HeaderEarlyJobID, body)
	br := bufio.NewReader(conn)
	line, err := br.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(line, " 200 ") {
		t.Fatalf("first status line %q, want the 200 answer (no 1xx to an HTTP/1.0 client)", line)
	}
	resp, err := http.ReadResponse(bufio.NewReader(io.MultiReader(strings.NewReader(line), br)), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.Header.Get(HeaderJobID) == "" {
		t.Errorf("answer %d without %s", resp.StatusCode, HeaderJobID)
	}
}
