// The wire panel of the chat page: what this page's own channel puts on the wire.
// A placeholder until the full view lands: it only names the panel.

import { t } from './i18n.js';

/** Renders the wire view into `container` for the page's `client` (a ChatClient). */
export function mountWireView(container, { client }) {
  const heading = document.createElement('h2');
  heading.textContent = t('wireTitle');
  container.replaceChildren(heading);
  container.dataset.session = client.session || '';
}
