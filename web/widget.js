// <htc-vlm-widget worker="ws://host:8080/ws" token="…" backend="auto|webgpu|cpu|burn-wgpu">: the HTC-VLM
// app as a custom element for other sites. This one module script, served by the worker next
// to the app, registers it:
//   <script type="module" src="http://host:8080/widget.js"></script>
// The app renders into the element's open shadow root (its styles inside), unmounts when the
// element leaves the page, and fires a composed `htc-answer` event for every finished answer
// (detail: {question, answer, requestId}).
const base = new URL('.', import.meta.url).href;
const app = await import(new URL('htc-web.js', base).href);
await app.default({ module_or_path: new URL('htc-web_bg.wasm', base).href });

class HtcVlmWidget extends HTMLElement {
  connectedCallback() {
    const root = this.shadowRoot ?? this.attachShadow({ mode: 'open' });
    this.handle = app.mount_widget(
      root,
      this,
      this.getAttribute('worker') ?? '',
      this.getAttribute('token') ?? '',
      this.getAttribute('backend') ?? 'auto',
      base,
    );
  }

  disconnectedCallback() {
    this.handle?.unmount();
    this.handle = undefined;
  }
}

if (!customElements.get('htc-vlm-widget')) {
  customElements.define('htc-vlm-widget', HtcVlmWidget);
}
