// Renders Ollama Modelfile TEMPLATEs with Go's own text/template, as Ollama does for a chat request,
// for tests/unit/test_ollama_templates.py.
//
// Input (stdin): a JSON list of {"template": ..., "system": ..., "messages": [{"role", "content"}]}.
// Output (stdout): a JSON list of the rendered strings, in the same order.
// Ollama's SYSTEM rule: when the Modelfile has a SYSTEM text and the request's first message is not a
// system message, a system message with that text is put first.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type Case struct {
	Template string    `json:"template"`
	System   string    `json:"system"`
	Messages []Message `json:"messages"`
}

// Values holds the fields of Ollama's template data that tunery's templates use.
type Values struct {
	Messages []Message
	System   string
}

func render(c Case) (string, error) {
	messages := c.Messages
	if c.System != "" && (len(messages) == 0 || messages[0].Role != "system") {
		messages = append([]Message{{Role: "system", Content: c.System}}, messages...)
	}
	tmpl, err := template.New("TEMPLATE").Parse(c.Template)
	if err != nil {
		return "", err
	}
	var out strings.Builder
	if err := tmpl.Execute(&out, Values{Messages: messages, System: c.System}); err != nil {
		return "", err
	}
	return out.String(), nil
}

func main() {
	var cases []Case
	if err := json.NewDecoder(os.Stdin).Decode(&cases); err != nil {
		fmt.Fprintln(os.Stderr, "bad input:", err)
		os.Exit(2)
	}
	results := make([]string, len(cases))
	for i, c := range cases {
		text, err := render(c)
		if err != nil {
			fmt.Fprintf(os.Stderr, "case %d: %v\n", i, err)
			os.Exit(1)
		}
		results[i] = text
	}
	if err := json.NewEncoder(os.Stdout).Encode(results); err != nil {
		os.Exit(2)
	}
}
