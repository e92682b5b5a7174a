package ollama_test

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

func TestRedactURL(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"http://127.0.0.1:11434":                    "http://127.0.0.1:11434",
		"http://user:s3cret@mac.local:11434/x":      "http://xxxxx@mac.local:11434/x",
		"https://s3cret@mac.local":                  "https://xxxxx@mac.local",
		"nats://s3cret@127.0.0.1:4222":              "nats://xxxxx@127.0.0.1:4222",
		"nats://app:s3cret@127.0.0.1:4222":          "nats://xxxxx@127.0.0.1:4222",
		"nats://app:s3cret@127.0.0.1:bad":           "nats://xxxxx@127.0.0.1:bad",
		"http://user:s3/cr@et@host:x":               "http://xxxxx@host:x",
		"app:s3cret@127.0.0.1:4222":                 "xxxxx@127.0.0.1:4222",
		"not a url":                                 "not a url",
		"http://user:1234/s3cret@host":              "http://xxxxx@host",
		"http://user:s3cret@[::1:11434/bad bracket": "http://xxxxx@[::1:11434/bad bracket",
		"http://[::1]:11434/?token=s3cret":          "http://[::1]:11434/?xxxxx",
		"http://host/x#s3cret":                      "http://host/x#xxxxx",
		"http://user:pa?s3cret@host/?k=s3cret":      "http://xxxxx@host/?xxxxx",
		"http://host:11434/?":                       "http://host:11434/?",
		"?token=s3cret":                             "?xxxxx",
		"http://Tok3n/s3cret@127.0.0.1:1":           "http://xxxxx@127.0.0.1:1",
		"nats://@:4222/s3cret@host":                 "nats://xxxxx@host", // a userinfo that ends before a later "@"
		"nats://u@h/pa:s3cret@host:4222":            "nats://xxxxx@host:4222",
		"nats://user:p@ss/w0rd@host:4222":           "nats://xxxxx@host:4222", // url.Parse: user "user:p", host "ss", path "/w0rd@host:4222"
		"http://u:s3cret@127.0.0.1:1/a@b":           "http://xxxxx@b",         // an "@" in a path too: all before it may be a password
	} {
		if got := ollama.RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

// A list of NATS URLs is redacted URL by URL; a comma in a password (which NATS would
// split there, so the setting is refused, quoted redacted) shows no part of it.
func TestRedactURLs(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"nats://a:4222,nats://b:4222":                       "nats://a:4222,nats://b:4222",
		"nats://u:s3cret@a:4222,nats://b:4222":              "nats://xxxxx@a:4222,nats://b:4222",
		"nats://a:4222,nats://u:s3cret@b:4222":              "nats://a:4222,nats://xxxxx@b:4222",
		"a:4222,b:4222":                                     "a:4222,b:4222",
		"u:s3cret@a:4222,b:4222":                            "xxxxx@a:4222,b:4222",
		"nats://alice:hun,ter2@127.0.0.1:4222":              "nats://xxxxx@127.0.0.1:4222",
		"nats://alice:123,456@127.0.0.1:4222,nats://b:4222": "nats://xxxxx@127.0.0.1:4222,nats://b:4222",
		"nats://u:p@x,y@h:4222":                             "nats://xxxxx@h:4222",
		"nats://u:a,b,c@h:4222":                             "nats://xxxxx@h:4222",
		"alice:123,456@127.0.0.1:4222":                      "xxxxx@127.0.0.1:4222",
		"u:p@x,y@h:4222":                                    "xxxxx@h:4222",
		"a:4222,nats://u:s3cret@b:4222":                     "a:4222,nats://xxxxx@b:4222",
		"nats://u:pa,ss://s3cret@h:4222":                    "nats://xxxxx@h:4222",
		"nats://a:4222, nats://b:4222":                      "nats://a:4222, nats://b:4222",
	} {
		got := ollama.RedactURLs(in)
		if got != want {
			t.Errorf("RedactURLs(%q) = %q, want %q", in, got, want)
		}
		for _, secret := range []string{"s3cret", "hun", "ter2", "123", "456", "p@x", "y@", "a,b"} {
			if strings.Contains(in, secret) && strings.Contains(got, secret) {
				t.Errorf("RedactURLs(%q) = %q shows %q", in, got, secret)
			}
		}
	}
}

// RedactError takes the credentials out of an error that quotes the URL, as url.Parse's
// errors do (and nats.Connect passes them on), also when a comma in the password cut the
// URL where a library split the list, and keeps the error's chain; a message without
// them, or with only a word a short secret happens to equal, is left as it is.
func TestRedactError(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		list, quoted string
		secrets      []string
	}{
		{"nats://a:4222,nats://app:s3cret@h:bad", "nats://app:s3cret@h:bad", []string{"s3cret"}},
		{"nats://a:4222,nats://s3cret@h:bad", "nats://s3cret@h:bad", []string{"s3cret"}},
		{"nats://a:4222,nats://app:s3cret@h:4222/%zz", "nats://app:s3cret@h:4222/%zz", []string{"s3cret"}},
		// The escape's own quote, "%zz", is part of the password.
		{"nats://app:s3c%zzret@h:4222", "nats://app:s3c%zzret@h:4222", []string{"s3c", "%zz", "ret"}},
		// Quoted as cut at the comma, as a library splitting the list would.
		{"nats://app:s3cr,et@h:4222", "nats://app:s3cr", []string{"s3cr"}},
		{"nats://app:s3cr,et@127.0.0.1:bad", "nats://app:s3cr", []string{"s3cr", "et@"}},
		{"app:s3cr,et@127.0.0.1:bad", "nats://app:s3cr", []string{"s3cr", "et@"}},
		{"nats://app:123,s3cret@h:4222", "nats://app:123", []string{"123", "s3cret"}},
		{"nats://app:123,s3cret@h:4222", "s3cret@h:4222", []string{"s3cret"}},
	} {
		_, perr := url.Parse(c.quoted)
		if perr == nil {
			perr = &url.Error{Op: "parse", URL: c.quoted, Err: errors.New("invalid port")}
		}
		err := ollama.RedactError(fmt.Errorf("connect: %w", perr), c.list)
		var ue *url.Error
		for _, secret := range c.secrets {
			if strings.Contains(err.Error(), secret) {
				t.Errorf("%s: %q shows %q", c.list, err, secret)
			}
		}
		if !errors.As(err, &ue) || !strings.HasPrefix(err.Error(), "connect: parse ") {
			t.Errorf("%s: %q lost the url.Error of its chain, or its words", c.list, err)
		}
	}

	// A parse error of an entry nats.go gave another scheme (tls:// with TLS on) whose
	// password holds a quote: the URL is quoted with it escaped.
	entry := `app:pa"ss123@127.0.0.1:4222`
	_, perr := url.Parse("tls://" + entry)
	if got := ollama.RedactError(fmt.Errorf("nats: %w", perr), entry).Error(); perr == nil || strings.Contains(got, "ss123") {
		t.Errorf("tls:// entry: %q", got)
	}
	// An HTTP client's error shows a password as "***", its user left.
	stars := &url.Error{Op: "Post", URL: "http://admin:***@127.0.0.1:1/api/chat", Err: errors.New("EOF")}
	if got := ollama.RedactError(stars, "http://admin:s3cret@127.0.0.1:1/api/chat").Error(); got != `Post "http://xxxxx@127.0.0.1:1/api/chat": EOF` {
		t.Errorf("HTTP client error with the password starred: %q", got)
	}
	// A parse error of an unrelated URL is left as it is.
	other := &url.Error{Op: "parse", URL: "h", Err: errors.New("boom")}
	if got := ollama.RedactError(other, "nats://u:s3cret@h:4222"); got != error(other) {
		t.Errorf("an unrelated parse error was rewritten: %v", got)
	}

	// Through an HTTP client's error, which quotes the URL asked.
	req := &url.Error{Op: "Post", URL: "http://tok3n-s3cret@127.0.0.1:1/jobs", Err: errors.New("connection refused")}
	if got := ollama.RedactError(req, "http://tok3n-s3cret@127.0.0.1:1").Error(); got != `Post "http://xxxxx@127.0.0.1:1/jobs": connection refused` {
		t.Errorf("HTTP client error: %q", got)
	}
	// A long secret is taken out wherever it stands.
	if got := ollama.RedactError(errors.New("auth failed for longs3cret99"), "nats://app:longs3cret99@h:1").Error(); strings.Contains(got, "longs3cret99") {
		t.Errorf("a bare long secret shows: %q", got)
	}
	for _, list := range []string{
		"nats://app:s3cret@h:4222",
		"nats://u:Xy9q%2Cc@127.0.0.1:1", // an escaped comma: NATS does not cut there
		"nats://u:nats@h:1",             // a secret that is a word of the message
	} {
		plain := errors.New("nats: no servers available for connection")
		if got := ollama.RedactError(plain, list); got != plain {
			t.Errorf("%s: an error without credentials was changed: %v", list, got)
		}
	}
}

// URL lists whose entries could be the parts of one URL with a comma in its user or
// password are refused; the lists NATS reads as several URLs are not.
func TestCheckURLList(t *testing.T) {
	t.Parallel()
	for list, ok := range map[string]bool{
		"nats://a:4222":                              true,
		"nats://a:4222,nats://b:4222":                true,
		"nats://u:p@a:4222, nats://u:p@b:4222":       true,
		"a:4222,b:4222":                              true,
		"u:p@a:4222,b:4222":                          true,
		"nats://u:p%2Cq@a:4222":                      true,
		"nats://alice:123,456@127.0.0.1:4222":        false,
		"nats://127.0.0.1:1, app:s3cret@127.0.0.1:2": false,
		"u:p@a:4222,u:p@b:4222":                      false,
		"to,ken@127.0.0.1:4222":                      false,
		"nats://u:1234,ss://s3cret@h:4222":           false,
		"nats://tok/en@127.0.0.1:4222":               false,
		"nats://u:p?q@127.0.0.1:4222":                false,
		"nats://a:bad":                               false,
		"ws://a:80,b:80":                             true,
		"nats://[::1]:4222,nats://[::1]:4223":        true,
		"[::1]:4222, [::1]:4223":                     true,
		"nats://u:p@a:4222,tls://u:p@b:4222":         true,
		"http://127.0.0.1:4222":                      false,
		"nats://a:4222,https://b:4222":               false,
		"TLS://a:4222,WSS://b:443":                   true,
	} {
		if err := ollama.CheckURLList(list); (err == nil) != ok {
			t.Errorf("CheckURLList(%q) = %v, want ok %v", list, err, ok)
		}
	}
}

// lockedBuffer is a log sink safe for the client's goroutines and the test.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestErrorsNeverShowThePassword: a password in BaseURL (basic auth for a proxy in front
// of Ollama) appears in no error and no log line of the client, whether the target is
// down, drops the connection, or the URL is refused.
func TestErrorsNeverShowThePassword(t *testing.T) {
	t.Parallel()
	const password = "s3cret"
	closed := ollamatest.ClosedAddr(t)
	fake := ollamatest.New(t)
	fake.SetDown(true)
	var logs lockedBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))

	var errs []error
	for _, base := range []string{"http://user:" + password + "@" + closed, strings.Replace(fake.URL, "://", "://user:"+password+"@", 1)} {
		c, err := ollama.NewClient(ollama.ClientConfig{BaseURL: base, Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(c.BaseURL(), password) {
			t.Errorf("BaseURL() = %q", c.BaseURL())
		}
		ctx := testCtx(t)
		_, err = c.Stream(ctx, "/api/chat", []byte(`{}`), func([]byte) error { return nil })
		errs = append(errs, err)
		_, _, err = c.Tags(ctx)
		errs = append(errs, err)
		resp, err := c.Do(ctx, http.MethodGet, "/api/version", nil, nil)
		if resp != nil {
			resp.Body.Close()
		}
		errs = append(errs, err)
	}
	for _, base := range []string{"ftp://user:" + password + "@host", "http://user:" + password + "@host:bad port"} {
		_, err := ollama.NewClient(ollama.ClientConfig{BaseURL: base})
		errs = append(errs, err)
	}
	for _, err := range errs {
		if err == nil {
			t.Fatal("a call against a down target succeeded")
		}
		if strings.Contains(err.Error(), password) {
			t.Errorf("error shows the password: %v", err)
		}
	}
	if !strings.Contains(logs.String(), "ollama connection error") {
		t.Fatalf("no connection error was logged: %s", logs.String())
	}
	if strings.Contains(logs.String(), password) {
		t.Errorf("the log shows the password:\n%s", logs.String())
	}
}

// TestStallNeverShowsThePassword: a stalled call's error and its log line carry the
// target's URL with the password redacted.
func TestStallNeverShowsThePassword(t *testing.T) {
	t.Parallel()
	const password = "s3cret"
	fake := ollamatest.New(t)
	fake.FailNext(1, ollamatest.Hang)
	var logs lockedBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c, err := ollama.NewClient(ollama.ClientConfig{BaseURL: strings.Replace(fake.URL, "://", "://user:"+password+"@", 1), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Stream(testCtx(t), "/api/chat", []byte(stallChat), func([]byte) error { return nil },
		ollama.FirstByteTimeout(20*time.Millisecond))
	var se *ollama.StallError
	if !errors.As(err, &se) {
		t.Fatalf("err = %v, want a *StallError", err)
	}
	if strings.Contains(se.URL, password) || strings.Contains(err.Error(), password) {
		t.Errorf("the stall shows the password: %q", se.URL)
	}
	if !strings.Contains(logs.String(), "stalled") {
		t.Fatalf("no stall was logged: %s", logs.String())
	}
	if strings.Contains(logs.String(), password) {
		t.Errorf("the log shows the password:\n%s", logs.String())
	}
}

// A base URL with a query (a proxy's key, "?token=...") is refused, not dropped without a
// word from every request, and the refusal does not show the query.
func TestBaseURLWithQueryRefused(t *testing.T) {
	t.Parallel()
	for _, raw := range []string{"http://127.0.0.1:11434/?token=s3cret", "http://127.0.0.1:11434/#s3cret"} {
		_, err := ollama.NewClient(ollama.ClientConfig{BaseURL: raw})
		if err == nil || !strings.Contains(err.Error(), "has a query or fragment") || strings.Contains(err.Error(), "s3cret") {
			t.Errorf("NewClient(%q) = %v; want a refusal that does not show the query", raw, err)
		}
	}
	if _, err := ollama.NewClient(ollama.ClientConfig{BaseURL: "http://127.0.0.1:11434/?"}); err != nil {
		t.Errorf("an empty query: %v", err)
	}
}

// TestRedactionKeepsEverySecretOut: inputs found by mutating the redaction code, each a
// way its secret reached the output before a check here caught the change.
func TestRedactionKeepsEverySecretOut(t *testing.T) {
	t.Parallel()
	if got := ollama.RedactURL("http://127.0.0.1:1/?key=s3cret#top"); strings.Contains(got, "s3cret") || strings.Contains(got, "top") {
		t.Errorf("RedactURL with a query and a fragment: %q", got)
	}
	if got, want := ollama.RedactURLs("u:s3cret@127.0.0.1:4222,nats://127.0.0.2:4222"), "xxxxx@127.0.0.1:4222,nats://127.0.0.2:4222"; got != want {
		t.Errorf("RedactURLs of a scheme-less first entry: %q, want %q", got, want)
	}
	parseErr := func(raw string) error {
		_, err := url.Parse(raw)
		if err == nil {
			t.Fatalf("%q parsed", raw)
		}
		return err
	}
	for _, c := range []struct {
		name, secret, list string
		err                error
	}{
		{"an 8-byte bare token", "abcdefgh", "nats://abcdefgh@127.0.0.1:1", errors.New("auth failed for abcdefgh")},
		{"an entry after a space", "longs3cret99", "nats://127.0.0.1:1, nats://app:longs3cret99@127.0.0.1:2",
			errors.New(`dial "nats://app:longs3cret99@127.0.0.1:2": refused`)},
		{"a scheme-less entry", "longs3cret99", "app:longs3cret99@127.0.0.1:1", errors.New("auth failed for longs3cret99")},
		{"an escaped token", "tok/en-s3cret", "nats://tok%2Fen-s3cret@127.0.0.1:1", errors.New("bad token tok/en-s3cret")},
		{"a short password beside its user", "short1", "nats://alice:short1@127.0.0.1:1", errors.New("login alice:short1 refused")},
		{"a password with a comma, whole", "123", "nats://alice:123,456@127.0.0.1:4222",
			errors.New(`dial "nats://alice:123,456@127.0.0.1:4222" failed`)},
		{"a library's other scheme", "ss123", `nats://app:pa"ss123@127.0.0.1:4222`, parseErr(`tls://app:pa"ss123@127.0.0.1:4222`)},
	} {
		if got := ollama.RedactError(c.err, c.list).Error(); strings.Contains(got, c.secret) {
			t.Errorf("%s: RedactError = %q, shows %q", c.name, got, c.secret)
		}
	}
	// Below minBareSecret a bare word is left alone; a URL's own error keeps its cause.
	short := errors.New("auth failed for abcdefg")
	if got := ollama.RedactError(short, "nats://abcdefg@127.0.0.1:1"); got.Error() != short.Error() {
		t.Errorf("a 7-byte bare word: %q, want it unchanged", got)
	}
	post := &url.Error{Op: "Post", URL: "http://tok3n-s3cret@127.0.0.1:1/api/chat", Err: errors.New("connection refused")}
	if got, want := ollama.RedactError(post, post.URL).Error(), `Post "http://xxxxx@127.0.0.1:1/api/chat": connection refused`; got != want {
		t.Errorf("a request's error: %q, want %q", got, want)
	}
}

// TestRedactionKeepsWhatIsNoSecret: redaction hides the secret and nothing else a reader
// needs (the host, a parse error's cause), and leaves alone errors of other URLs.
func TestRedactionKeepsWhatIsNoSecret(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ name, got, want string }{
		// One "@": the host and path stay.
		{"a path", ollama.RedactURL("http://u:s3cret@127.0.0.1:1/a/b"), "http://xxxxx@127.0.0.1:1/a/b"},
		// An entry without a host is the start of the next one's URL, as NATS cuts a list.
		{"an entry without a host", ollama.RedactURLs("nats://,nats://u:s3cret@127.0.0.1:1"), "nats://xxxxx@127.0.0.1:1"},
	} {
		if c.got != c.want {
			t.Errorf("%s: %q, want %q", c.name, c.got, c.want)
		}
	}
	_, perr := url.Parse("nats://app:s3cret@127.0.0.1:bad")
	if perr == nil {
		t.Fatal("a bad port parsed")
	}
	got := ollama.RedactError(perr, "nats://app:s3cret@127.0.0.1:bad").Error()
	if want := `parse "nats://xxxxx@127.0.0.1:bad": invalid port "…" after host`; got != want {
		t.Errorf("a parse error of the list: %q, want %q", got, want)
	}
	// A parse error of an empty URL is no entry's, even of a list ending in a comma.
	empty := &url.Error{Op: "parse", URL: "", Err: errors.New("empty url")}
	if got := ollama.RedactError(empty, "nats://127.0.0.1:1,"); got != error(empty) {
		t.Errorf("a parse error of an empty URL: %q, want it unchanged", got)
	}
	// NATS trims the space after a comma before it parses an entry: the error quotes it trimmed.
	list := "nats://127.0.0.1:1, app:s3cr,et@127.0.0.1:bad"
	_, perr = url.Parse("nats://app:s3cr")
	if perr == nil {
		t.Fatal("a port of letters parsed")
	}
	if got := ollama.RedactError(perr, list).Error(); strings.Contains(got, "s3cr") {
		t.Errorf("a parse error of a trimmed piece: %q shows the password", got)
	}
}

// TestCheckURLListAcceptsWhatNATSReads: lists NATS takes as meant pass, however spelled.
func TestCheckURLListAcceptsWhatNATSReads(t *testing.T) {
	t.Parallel()
	for _, ok := range []string{
		"nats://127.0.0.1:4222,",
		"nats://127.0.0.1:4222, ,nats://127.0.0.1:4223",
		"nats://u:p@127.0.0.1:4222,NATS://u:p@127.0.0.1:4223",
		"wss://u:p@127.0.0.1:443,wss://u:p@127.0.0.1:444",
	} {
		if err := ollama.CheckURLList(ok); err != nil {
			t.Errorf("CheckURLList(%q) = %v, want nil", ok, err)
		}
	}
	for _, bad := range []string{"nats://u:p@", "nats:///x"} {
		if err := ollama.CheckURLList(bad); err == nil {
			t.Errorf("CheckURLList(%q) = nil, want an entry without a host refused", bad)
		}
	}
}
