package ollama

import (
	"encoding/base64"
	"errors"
	"strings"
)

// CheckImageURL checks an image edit's "image" as Ollama's OpenAI layer reads it
// (v0.17.4 openai.decodeImageURL): a data URL of a JPEG, PNG or WebP, or of no type,
// holding standard base64. Its errors are Ollama's words, which it answers after
// "invalid image: ".
func CheckImageURL(url string) error {
	if strings.HasPrefix(url, "http://") || strings.HasPrefix(url, "https://") {
		return errors.New("image URLs are not currently supported, please use base64 encoded data instead")
	}
	data, ok := strings.CutPrefix(url, "data:;base64,")
	for _, t := range []string{"jpeg", "jpg", "png", "webp"} {
		if ok {
			break
		}
		data, ok = strings.CutPrefix(url, "data:image/"+t+";base64,")
	}
	if !ok {
		return errors.New("invalid image input")
	}
	if _, err := base64.StdEncoding.DecodeString(data); err != nil {
		return errors.New("invalid image input")
	}
	return nil
}
