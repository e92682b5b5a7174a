package app_test

import (
	"encoding/json"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/cmd/foreman/app"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// OtherOllamaEnv names a second real Ollama with a model store of its own (not shared
// with FOREMAN_TEST_OLLAMA_URL's), for the several-Macs end-to-end test.
const OtherOllamaEnv = "FOREMAN_TEST_OLLAMA_OTHER_URL"

// Two foremen in front of two real Ollamas with different models: a model only the
// second has is copied there (POST /api/copy) and used through the first foreman.
func TestSeveralMacsRealOllama(t *testing.T) {
	url1 := ollamatest.RealOllama(t)
	url2 := os.Getenv(OtherOllamaEnv)
	if url2 == "" {
		t.Skipf("%s is unset: start a second real Ollama with its own OLLAMA_MODELS", OtherOllamaEnv)
	}
	const only2 = "mac-two-only:latest"
	post := func(u, path, body string) int {
		req, _ := http.NewRequest(http.MethodPost, u+path, strings.NewReader(body))
		if path == "/api/delete" {
			req.Method = http.MethodDelete
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post(url2, "/api/copy", `{"source":"tiny-a","destination":"`+only2+`"}`); code != http.StatusOK {
		t.Fatalf("copy on the second Ollama: %d", code)
	}
	t.Cleanup(func() { post(url2, "/api/delete", `{"model":"`+only2+`"}`) })
	if slices.Contains(realTags(t, url1), only2) {
		t.Skip("the two Ollamas share a model store")
	}

	nurl := sharedNATS(t)
	f1 := startForeman(t, nurl, "mac-1", url1)
	f2 := startForeman(t, nurl, "mac-2", url2)
	waitTargets(t, f1, 2)
	waitTargets(t, f2, 2)

	code, b := call(t, f1, http.MethodPost, "/api/chat", `{"model":"mac-two-only","messages":[{"role":"user","content":"hi"}],"stream":false,"options":{"num_predict":8}}`)
	if code != http.StatusOK {
		t.Fatalf("chat for the second Mac's model through the first foreman: %d %s", code, b)
	}
	t.Logf("chat mac-two-only via mac-1: %s", b)
	// The other way round, when the second Ollama lacks tiny-b (its store is a copy
	// without it): tiny-b through the second foreman runs on the first Ollama.
	if !slices.Contains(realTags(t, url2), "tiny-b:latest") {
		code, b := call(t, f2, http.MethodPost, "/api/generate", `{"model":"tiny-b","prompt":"hi","stream":false,"options":{"num_predict":8}}`)
		if code != http.StatusOK {
			t.Errorf("tiny-b through the second foreman: %d %s", code, b)
		}
	}
	if code, b := call(t, f1, http.MethodPost, "/api/show", `{"model":"mac-two-only"}`); code != http.StatusOK {
		t.Errorf("show via mac-1: %d %s", code, b)
	}
	want := append(realTags(t, url1), realTags(t, url2)...)
	slices.Sort(want)
	want = slices.Compact(want)
	for name, f := range map[string]*app.App{"mac-1": f1, "mac-2": f2} {
		_, b := call(t, f, http.MethodGet, "/api/tags", "")
		var tags ollama.ListResponse
		_ = json.Unmarshal(b, &tags)
		var got []string
		for _, m := range tags.Models {
			got = append(got, m.Name)
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("/api/tags via %s: %v, want %v", name, got, want)
		}
	}
	_, b = call(t, f2, http.MethodGet, "/healthz", "")
	t.Logf("/healthz via mac-2: %s", b)
}

func realTags(t *testing.T, u string) []string {
	t.Helper()
	resp, err := http.Get(u + "/api/tags")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var tags ollama.ListResponse
	if err := json.NewDecoder(resp.Body).Decode(&tags); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range tags.Models {
		out = append(out, m.Name)
	}
	return out
}
