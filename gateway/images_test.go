package gateway

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// imageModels is a fake Ollama with a text model and an image generation model.
func imageModels() bundleOption {
	return withFake(ollamatest.WithModels(ollamatest.Model{Name: "tiny-a"}, ollamatest.Model{Name: "pic", Image: true}))
}

// pngData is a data URL of a picture, as an edit sends it.
var pngData = "data:image/png;base64," + base64.StdEncoding.EncodeToString([]byte("\x89PNG a picture"))

// OpenAI's image routes are queued jobs like the chats (ADR-0067): answered as Ollama
// answers them, one at a time with the chats on the one worker, each a sync job of its
// own kind that ends done.
func TestImageRoutesAreQueuedJobs(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil, imageModels())
	ctx := testCtx(t, 60*time.Second)
	cases := []struct {
		path string
		kind broker.Kind
		body string
	}{
		{"/v1/images/generations", broker.KindOpenAIImages, `{"model":"pic","prompt":"a lighthouse","size":"512x512","seed":7}`},
		// Ollama's image routes answer whole, whatever "stream" says.
		{"/v1/images/generations", broker.KindOpenAIImages, `{"model":"pic","prompt":"a lighthouse","stream":true}`},
		{"/v1/images/edits", broker.KindOpenAIImageEdits, fmt.Sprintf(`{"model":"pic","prompt":"make it blue","image":%q}`, pngData)},
	}
	for _, c := range cases {
		got := post(t, ctx, b.URL, c.path, []byte(c.body))
		want := post(t, ctx, b.Fake.URL, c.path, []byte(c.body))
		if got.Status != http.StatusOK || got.Status != want.Status || got.CType != want.CType || !bytes.Equal(got.Body, want.Body) {
			t.Errorf("%s %s: got %d %q %s, want %d %q %s", c.path, c.body, got.Status, got.CType, got.Body, want.Status, want.CType, want.Body)
		}
		var answer struct {
			Data []struct {
				B64JSON string `json:"b64_json"`
			} `json:"data"`
		}
		if err := json.Unmarshal(got.Body, &answer); err != nil || len(answer.Data) != 1 || answer.Data[0].B64JSON == "" {
			t.Errorf("%s: answer %s has no picture (%v)", c.path, got.Body, err)
		}
		id := got.Header.Get(HeaderJobID)
		if err := broker.ValidateID(id); err != nil {
			t.Errorf("%s: %s %q: %v", c.path, HeaderJobID, id, err)
			continue
		}
		j := waitRecord(t, ctx, b.Broker.Store, id, func(j *broker.Job) bool { return j.State.Terminal() })
		if j.State != broker.StateDone || !j.Sync || j.Kind != c.kind || j.Model != "pic" {
			t.Errorf("%s: job %+v, want a done sync %s job of pic", c.path, j, c.kind)
		}
	}

	// Pictures and chats at once: the target runs one at a time.
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Go(func() {
			path, body := "/api/chat", chatBody("tiny-a", fmt.Sprintf("question %d", i), "false")
			if i%2 == 0 {
				path, body = "/v1/images/generations", fmt.Appendf(nil, `{"model":"pic","prompt":"picture %d"}`, i)
			}
			if got := post(t, ctx, b.URL, path, body); got.Status != http.StatusOK {
				t.Errorf("%s %s: %d %s", path, body, got.Status, got.Body)
			}
		})
	}
	wg.Wait()
	if m := b.Fake.MaxInFlight(); m != 1 {
		t.Errorf("the fake ran %d requests at once, want 1", m)
	}
}

// What Ollama's image middlewares refuse before they look at the model is refused so by
// foreman, in their order and words, with no job; an unknown model is Ollama's 404; a
// model whose capabilities say it makes no images (which Ollama would run as text, to
// answer an empty 200) is a 400 saying so, with no job (ADR-0067).
func TestImageRouteErrors(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil, imageModels())
	ctx := testCtx(t, 60*time.Second)
	for _, c := range []struct {
		path, body string
		status     int
		msg        string
	}{
		{"/v1/images/generations", `{}`, 400, "prompt is required"},
		{"/v1/images/generations", `{"model":"pic"}`, 400, "prompt is required"},
		{"/v1/images/generations", `{"model":"nope"}`, 400, "prompt is required"},
		{"/v1/images/generations", `{"prompt":"x"}`, 400, "model is required"},
		{"/v1/images/edits", `{"model":"pic","prompt":"x"}`, 400, "image is required"},
		{"/v1/images/edits", `{"model":"nope","prompt":"x"}`, 400, "image is required"},
		{"/v1/images/edits", `{"model":"nope","prompt":"x","image":"not a data URL"}`, 400, "invalid image: invalid image input"},
		{"/v1/images/edits", `{"model":"pic","prompt":"x","image":"https://example.com/cat.png"}`, 400,
			"invalid image: image URLs are not currently supported, please use base64 encoded data instead"},
		{"/v1/images/generations", `{"model":"nope","prompt":"x"}`, 404, "model 'nope' not found"},
		// A name Ollama cannot parse is its generate's 404, not the chat's 400.
		{"/v1/images/generations", `{"model":"pic:","prompt":"x"}`, 404, "model 'pic:' not found"},
		{"/v1/images/generations", `{"model":"pic","prompt":"x"`, 400, "invalid JSON body"},
		// A member of the wrong type is the middleware's decoder's 400, before it looks
		// at the prompt, the model or the image; a member its request has not, it ignores.
		{"/v1/images/edits", `{"model":"pic","prompt":{},"image":"a"}`, 400,
			"json: cannot unmarshal object into Go struct field ImageEditRequest.prompt of type string"},
		{"/v1/images/edits", `{"prompt":"x","image":5}`, 400,
			"json: cannot unmarshal number into Go struct field ImageEditRequest.image of type string"},
		{"/v1/images/generations", `{"n":"two"}`, 400,
			"json: cannot unmarshal string into Go struct field ImageGenerationRequest.n of type int"},
		{"/v1/images/generations", `{"model":"nope","prompt":5}`, 400,
			"json: cannot unmarshal number into Go struct field ImageGenerationRequest.prompt of type string"},
		{"/v1/images/generations", `{"prompt":"x","image":5}`, 400, "model is required"},
	} {
		got := post(t, ctx, b.URL, c.path, []byte(c.body))
		if got.Status != c.status || !strings.HasPrefix(errorBody(t, got.Body), c.msg) || got.Header.Get(HeaderJobID) != "" {
			t.Errorf("%s %s: %d %s (job %q), want %d %q and no job", c.path, c.body, got.Status, got.Body, got.Header.Get(HeaderJobID), c.status, c.msg)
		}
		// Where the fake (as Ollama) says the same, foreman's answer is its, byte for byte
		// but for the last newline.
		if want := post(t, ctx, b.Fake.URL, c.path, []byte(c.body)); want.Status == c.status && errorBody(t, want.Body) == c.msg && !bytes.Equal(bytes.TrimSpace(got.Body), bytes.TrimSpace(want.Body)) {
			t.Errorf("%s %s: foreman %s, Ollama %s", c.path, c.body, got.Body, want.Body)
		}
	}
	// A text model: refused before it is queued, where Ollama would answer an empty 200.
	body := []byte(`{"model":"tiny-a","prompt":"a lighthouse"}`)
	if direct := post(t, ctx, b.Fake.URL, "/v1/images/generations", body); direct.Status != http.StatusOK || len(direct.Body) != 0 {
		t.Fatalf("the fake answers a text model's picture with %d %q, not Ollama's empty 200", direct.Status, direct.Body)
	}
	got := post(t, ctx, b.URL, "/v1/images/generations", body)
	// Only the test's own calls reached the target's image routes: one a case, and the
	// text model's.
	calls := 0
	for _, c := range b.Fake.Calls() {
		if strings.HasPrefix(c.Path, "/v1/images/") {
			calls++
		}
	}
	if calls != 17 {
		t.Errorf("the target's image routes got %d calls, want the test's 17: foreman sent some on", calls)
	}
	if got.Status != http.StatusBadRequest || !strings.HasPrefix(errorBody(t, got.Body), `model "tiny-a" makes no images`) || got.Header.Get(HeaderJobID) != "" {
		t.Errorf("a text model's picture: %d %s (job %q), want a 400 and no job", got.Status, got.Body, got.Header.Get(HeaderJobID))
	}
	var typed struct {
		Error struct {
			Type string `json:"type"`
		} `json:"error"`
	}
	if err := json.Unmarshal(got.Body, &typed); err != nil || typed.Error.Type != "invalid_request_error" {
		t.Errorf("a text model's picture: %s, want an OpenAI invalid_request_error", got.Body)
	}
}

// An empty answer to an image route that got past the capability check (capabilities
// that could not be read; an image model whose generation failed after its first step,
// which Ollama answers the same way) fails the job as the target's failure, saying what
// came, not as the caller's mistake.
func TestImageEmptyAnswerIsTheTargetsFailure(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil, imageModels(), withTarget(func(c ollama.Client) ollama.Client { return noShow{c} }))
	ctx := testCtx(t, 60*time.Second)
	got := post(t, ctx, b.URL, "/v1/images/generations", []byte(`{"model":"tiny-a","prompt":"a lighthouse"}`))
	const msg = `the target answered no image for model "tiny-a" (an empty answer: its image generation failed, or the model makes no images)`
	if got.Status != http.StatusBadGateway || errorBody(t, got.Body) != msg {
		t.Errorf("an empty answer: %d %s, want 502 %q", got.Status, got.Body, msg)
	}
	j := waitRecord(t, ctx, b.Broker.Store, got.Header.Get(HeaderJobID), func(j *broker.Job) bool { return j.State.Terminal() })
	if j.State != broker.StateFailed || j.Error != msg || j.Attempt != 1 {
		t.Errorf("its job: %+v, want failed after one attempt with %q", j, msg)
	}
}

// noShow is a target whose /api/show fails: no model's capabilities can be read.
type noShow struct{ ollama.Client }

func (n noShow) Do(ctx context.Context, method, path string, header http.Header, body io.Reader) (*http.Response, error) {
	if path == "/api/show" {
		return nil, &ollama.ConnectionError{Op: "POST /api/show", URL: path, Err: errors.New("refused")}
	}
	return n.Client.Do(ctx, method, path, header, body)
}

// POST /jobs takes the image routes' bodies as kinds of their own: the picture is the
// job's result, and fields of the wrong type are refused before the job waits its turn.
func TestImageJobsSubmitted(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil, imageModels())
	ctx := testCtx(t, 60*time.Second)
	for _, c := range []struct {
		kind, path, body string
	}{
		{"openai_images", "/v1/images/generations", `{"model":"pic","prompt":"a lighthouse"}`},
		{"openai_image_edits", "/v1/images/edits", fmt.Sprintf(`{"model":"pic","prompt":"blue","image":%q}`, pngData)},
	} {
		id := jobsSubmit(t, b.testBundle, `{"kind":"`+c.kind+`",`+strings.TrimPrefix(c.body, "{"))
		waitRecord(t, ctx, b.Broker.Store, id, func(j *broker.Job) bool { return j.State.Terminal() })
		v := jobsGet(t, b.testBundle, id)
		want := post(t, ctx, b.Fake.URL, c.path, []byte(c.body))
		if v.State != broker.StateDone || string(v.Kind) != c.kind || !bytes.Equal(bytes.TrimSpace(v.Result), bytes.TrimSpace(want.Body)) {
			t.Errorf("%s job: %s %s result %s, want done with %s", c.kind, v.State, v.Kind, v.Result, want.Body)
		}
		var calls int
		for _, call := range b.Fake.Calls() {
			if call.Path == c.path && bytes.Equal(call.Body, []byte(c.body)) {
				calls++
			}
		}
		if calls != 2 { // the job's, and the test's own
			t.Errorf("%s: the target saw the body %d times, want the job's call and the test's", c.kind, calls)
		}
	}
	for _, c := range []struct{ body, msg string }{
		// In the words of Ollama's image middlewares' decoder, as the sync routes answer.
		{`{"kind":"openai_images","model":"pic","prompt":5}`,
			`json: cannot unmarshal number into Go struct field ImageGenerationRequest.prompt of type string`},
		{`{"kind":"openai_image_edits","model":"pic","prompt":"x","image":["a"]}`,
			`json: cannot unmarshal array into Go struct field ImageEditRequest.image of type string`},
		{`{"kind":"openai_image_edits","model":"pic","prompt":{},"image":"a"}`,
			`json: cannot unmarshal object into Go struct field ImageEditRequest.prompt of type string`},
		// Refused at submit as Ollama refuses them, not in their turn.
		{`{"kind":"openai_images","model":"pic"}`, `prompt is required`},
		{`{"kind":"openai_images","model":"pic","prompt":""}`, `prompt is required`},
		{`{"kind":"openai_image_edits","model":"pic","prompt":"x"}`, `image is required`},
		{`{"kind":"openai_image_edits","model":"pic","prompt":"x","image":"not a data URL"}`, `invalid image: invalid image input`},
		{`{"kind":"openai_images","model":"tiny-a","prompt":"x"}`, `model "tiny-a" makes no images`},
	} {
		resp, out := b.request(t, http.MethodPost, "/jobs", []byte(c.body))
		if resp.StatusCode != http.StatusBadRequest || !strings.HasPrefix(errorBody(t, out), c.msg) {
			t.Errorf("%s: %d %s, want 400 %q", c.body, resp.StatusCode, out, c.msg)
		}
	}
}

// An image model on Ollama's own generate: streamed, its progress lines and the picture
// in the last come as Ollama sends them; not streamed, the answer foreman assembles from
// the stream it asks for (ADR-0050) is Ollama's non-streamed answer, the picture with it.
func TestImageOnNativeGenerate(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil, imageModels())
	ctx := testCtx(t, 60*time.Second)
	for _, stream := range []string{"", `,"stream":true`, `,"stream":false`} {
		body := []byte(`{"model":"pic","prompt":"a lighthouse"` + stream + `}`)
		got := post(t, ctx, b.URL, "/api/generate", body)
		want := post(t, ctx, b.Fake.URL, "/api/generate", body)
		if got.Status != http.StatusOK || got.CType != want.CType || !bytes.Equal(got.Body, want.Body) {
			t.Errorf("%s: got %d %q\n%s\nwant %d %q\n%s", body, got.Status, got.CType, got.Body, want.Status, want.CType, want.Body)
		}
		if !bytes.Contains(got.Body, []byte(`"image":"`)) {
			t.Errorf("%s: no picture in %s", body, got.Body)
		}
	}
	// The non-streamed one was assembled: the worker asked for the stream. Each body went
	// to the fake twice (from the worker and from the test) but the non-streamed one,
	// which only the test sent, its stream the worker's third.
	counts := map[string]int{}
	for _, c := range b.Fake.Calls() {
		if c.Path == "/api/generate" {
			counts[string(c.Body)]++
		}
	}
	if n, m := counts[`{"model":"pic","prompt":"a lighthouse","stream":false}`], counts[`{"model":"pic","prompt":"a lighthouse","stream":true}`]; n != 1 || m != 3 {
		t.Errorf("the target got the non-streamed body %d times and the streamed %d, want 1 and 3 (%v)", n, m, counts)
	}
}
