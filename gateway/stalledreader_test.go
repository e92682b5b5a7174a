package gateway

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"
)

// A client that asks for an artifact and reads nothing is cut off after WriteTimeout,
// and the handler lets the artifact go, where it held it for as long as the client kept
// its connection (a few hundred such clients held gigabytes).
func TestStalledReaderOfAnArtifactIsCutOff(t *testing.T) {
	t.Parallel()
	const size = 8 << 20
	cut := make(chan error, 1)
	b := newTestBundle(t, withSendBuffer(4<<10), withGateway(func(c *Config) {
		c.WriteTimeout = 200 * time.Millisecond
		c.writeCut = func(err error) {
			select {
			case cut <- err:
			default:
			}
		}
	}))
	id := jobsSubmit(t, b, `{"model":"tiny-a","messages":[]}`)
	finishJob(t, b.Broker.Store, id, []byte(`{"done":true}`), map[string][2]string{
		"result.json": {"application/json", `"` + strings.Repeat("x", size-2) + `"`},
	})
	u, _ := url.Parse(b.URL)
	c, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.(*net.TCPConn).SetReadBuffer(4 << 10)
	fmt.Fprintf(c, "GET /jobs/%s/artifacts/result.json HTTP/1.1\r\nHost: %s\r\n\r\n", id, u.Host)
	select { // the client reads nothing meanwhile
	case err := <-cut:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("answer cut by %v, want its write deadline", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("a client that reads nothing still holds its answer")
	}
	// What was sent before the cut arrives, then the end: not the whole artifact.
	_ = c.SetReadDeadline(time.Now().Add(15 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK || n >= size || err == nil {
		t.Fatalf("status %d, %d of %d bytes, %v: want the answer cut short", resp.StatusCode, n, size, err)
	}
}
