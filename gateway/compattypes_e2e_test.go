package gateway

import (
	"bytes"
	"io"
	"net/http"
	"regexp"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// Every body of TestCompatMemberTypesAsOllamaDecodes' and TestMemberTypesAsOllamaDecodes'
// corpora that foreman refuses for a member's type is answered as the real Ollama answers
// it on the same route: the status, Content-Type and bytes (the Anthropic request_id
// aside).
func TestE2EMemberTypesMatchDirect(t *testing.T) {
	b := newE2EBundle(t, nil)
	ctx := testCtx(t, 5*time.Minute)
	reqID := regexp.MustCompile(`"req_[0-9a-f]{24}"`)
	send := func(base, path, body string) (int, string, string) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+path, bytes.NewReader([]byte(body)))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("POST %s: %v", path, err)
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("Content-Type"), reqID.ReplaceAllString(string(out), `"req_ID"`)
	}
	sent, same := 0, 0
	compare := func(path, body string) {
		sent++
		vs, vct, vbody := send(b.URL, path, body)
		ds, dct, dbody := send(b.Target, path, body)
		if vs != ds || vct != dct || vbody != dbody {
			t.Errorf("%s %s:\nforeman %d %q %s\ndirect  %d %q %s", path, body, vs, vct, vbody, ds, dct, dbody)
			return
		}
		same++
	}
	for _, c := range compatTypes {
		for _, member := range append(jsonMembers(c.typ), "unknown") {
			for _, value := range compatValues {
				if body := compatBody(c.base, member, value); compatTypeRefused(compatParse(c.kind, []byte(body))) {
					compare(c.kind.Path(), body)
				}
			}
		}
	}
	t.Logf("OpenAI and Anthropic routes: %d of %d refused bodies answered as Ollama answers them", same, sent)
	if sent == 0 {
		t.Fatal("nothing refused: the corpus proves nothing")
	}
	// The native routes' corpus (TestMemberTypesAsOllamaDecodes), the model and the
	// stream included.
	sent, same = 0, 0
	for _, kind := range []broker.Kind{broker.KindChat, broker.KindGenerate} {
		for _, member := range typeMembers {
			for _, value := range typeValues {
				body := typeBody(kind, member, value)
				if _, err := parseInference(kind, []byte(body)); typeRefusal(err) {
					compare(kind.Path(), body)
				}
			}
		}
	}
	t.Logf("native routes: %d of %d refused bodies answered as Ollama answers them", same, sent)
}
