// pages/projects.js — projects (operator only).
//
// Owns: #/projects. The project list with this period's spend against the budget as a bar,
// one form for creating and editing (name, allowed models as checkboxes — none checked means
// every model —, default strategy, rpm, tpm, budget in USD, budget period) and deleting with
// an in-page confirmation; the server's refusals (e.g. 409 while the project has active keys)
// are shown as their messages.

import { getJson, sendJson, send } from '../api.js';
import { h, append, replace, keyedTable, confirmButton, field, statusLine, section } from '../dom.js';
import { usd, num, DASH } from '../format.js';

export function mount(ctx, root) {
  const status = statusLine('projects-status');
  let editing = null; // the project being edited, or null when creating
  let models = [];
  let list = [];

  // ---- form ----
  const title = h('h2', { id: 'project-form-title', text: 'Create a project' });
  const name = h('input', { type: 'text', id: 'project-name', required: true, maxlength: '64', autocomplete: 'off', 'data-testid': 'project-name', placeholder: 'team-a' });
  const modelsBox = h('div', { class: 'checks', 'data-testid': 'project-models' });
  const strategy = h('input', { type: 'text', id: 'project-strategy', list: 'strategy-tags', autocomplete: 'off', 'data-testid': 'project-strategy', placeholder: 'price' });
  const strategyTags = h('datalist', { id: 'strategy-tags' });
  const rpm = h('input', { type: 'number', id: 'project-rpm', min: '1', step: '1', inputmode: 'numeric', 'data-testid': 'project-rpm' });
  const tpm = h('input', { type: 'number', id: 'project-tpm', min: '1', step: '1', inputmode: 'numeric', 'data-testid': 'project-tpm' });
  const budget = h('input', { type: 'number', id: 'project-budget', min: '0', step: 'any', inputmode: 'decimal', 'data-testid': 'project-budget' });
  const period = h(
    'select',
    { id: 'project-period', 'data-testid': 'project-period' },
    h('option', { value: 'month', text: 'per month' }),
    h('option', { value: 'day', text: 'per day' }),
  );
  const submit = h('button', { type: 'submit', 'data-testid': 'save-project', text: 'Create project' });
  const cancel = h('button', { type: 'button', class: 'secondary', 'data-testid': 'cancel-edit', text: 'Cancel edit', hidden: true });
  const form = h(
    'form',
    { class: 'form-grid', 'aria-labelledby': 'project-form-title', novalidate: true },
    field('Name', name, 'Letters, digits, . _ -'),
    h('fieldset', { class: 'wide' }, h('legend', { text: 'Allowed models' }), h('p', { class: 'hint', text: 'None checked: every model.' }), modelsBox),
    field('Default strategy', strategy, 'Used when a request names none, e.g. price, latency, latency@price. Empty: the gateway default.'),
    strategyTags,
    field('Requests per minute', rpm, 'Empty: no limit'),
    field('Tokens per minute', tpm, 'Empty: no limit'),
    field('Budget (USD)', budget, 'Empty: no budget'),
    field('Budget period', period),
    h('div', { class: 'actions' }, submit, ' ', cancel),
  );
  const formPanel = h('section', { class: 'panel', 'data-testid': 'project-form' }, title, form, status.el);

  const table = keyedTable({
    label: 'Projects',
    testid: 'projects-table',
    rowTestid: 'project-row',
    key: (p) => p.id,
    empty: 'No projects yet. Create one above.',
    rowAttrs: (p) => ({ 'data-name': p.name }),
    columns: [
      { label: 'Name', value: (p) => h('strong', { text: p.name }), sig: (p) => p.name },
      { label: 'Models', value: (p) => (p.allowed_models ? (p.allowed_models.length ? p.allowed_models.join(', ') : 'none') : 'all') },
      { label: 'Strategy', value: (p) => p.default_strategy || 'default' },
      { label: 'Limits', value: (p) => `${p.rpm ? `${num(p.rpm)} rpm` : 'no rpm limit'} · ${p.tpm ? `${num(p.tpm)} tpm` : 'no tpm limit'}` },
      { label: 'Spend this period', value: (p) => budgetCell(p), sig: (p) => `${p.budget_spent_usd}|${p.budget_usd}|${p.budget_period}` },
      { label: 'Actions', value: (p) => actions(p), sig: (p) => `${p.name}|${p.updated_at}` },
    ],
  });

  append(root, [h('div', { class: 'page-head' }, h('h1', { text: 'Projects' })), formPanel, section('Projects', table.el)]);

  function modelChecks(checked) {
    replace(
      modelsBox,
      models.length
        ? models.map((id) => {
            const box = h('input', { type: 'checkbox', value: id, id: `pm-${id.replace(/[^A-Za-z0-9_-]/g, '_')}`, 'data-testid': `allowed-${id}`, checked: checked.includes(id) });
            return h('label', { class: 'check', for: box.id }, box, ' ', id);
          })
        : h('p', { class: 'muted', text: 'No models in the catalog.' }),
    );
  }

  async function load() {
    const [projectsDoc, modelsDoc, plugins] = await Promise.all([
      getJson('/admin/projects', undefined, { signal: ctx.signal }),
      getJson('/admin/models', undefined, { signal: ctx.signal }).catch(() => ({ data: [] })),
      getJson('/admin/plugins', undefined, { signal: ctx.signal }).catch(() => null),
    ]);
    list = projectsDoc.projects || [];
    const ids = (modelsDoc.data || []).map((m) => m.id);
    if (ids.join('\n') !== models.join('\n')) {
      const keep = checkedModels();
      models = ids;
      modelChecks(keep);
    }
    const tags = new Set(['price', 'latency', 'tokenrate', ...((plugins && plugins.available) || [])]);
    replace(strategyTags, [...tags].map((t) => h('option', { value: t })));
    table.update(list);
  }

  function reload() {
    return load()
      .then(() => ctx.clearError('projects'))
      .catch((e) => ctx.showError('projects', e));
  }

  function checkedModels() {
    return Array.from(modelsBox.querySelectorAll('input[type=checkbox]:checked')).map((b) => b.value);
  }

  function startEdit(p) {
    editing = p;
    title.textContent = `Edit project ${p.name}`;
    submit.textContent = 'Save changes';
    cancel.hidden = false;
    name.value = p.name;
    modelChecks(p.allowed_models || []);
    strategy.value = p.default_strategy || '';
    rpm.value = p.rpm ?? '';
    tpm.value = p.tpm ?? '';
    budget.value = p.budget_usd ?? '';
    period.value = p.budget_period || 'month';
    status.say('');
    formPanel.scrollIntoView({ block: 'start' });
    name.focus();
  }

  function stopEdit() {
    editing = null;
    title.textContent = 'Create a project';
    submit.textContent = 'Create project';
    cancel.hidden = true;
    form.reset();
    modelChecks([]);
  }

  cancel.addEventListener('click', stopEdit);

  function actions(p) {
    const edit = h('button', { type: 'button', class: 'secondary', 'data-testid': 'edit-project', text: 'Edit' });
    edit.addEventListener('click', () => startEdit(list.find((x) => x.id === p.id) || p));
    const del = confirmButton({
      label: 'Delete',
      testid: 'delete-project',
      question: `Delete project ${p.name}?`,
      confirmLabel: 'Delete project',
      action: async () => {
        await send(`/admin/projects/${encodeURIComponent(p.name)}`, { method: 'DELETE', signal: ctx.signal });
        status.say(`Project ${p.name} deleted.`);
        ctx.clearError('projects');
        if (editing && editing.id === p.id) stopEdit();
        await load();
      },
      onError: (e) => ctx.showError('projects', e),
    });
    return h('span', { class: 'row-actions' }, edit, ' ', del);
  }

  /** The form's fields as the API's body; throws a readable Error for bad numbers. */
  function body() {
    const b = { name: name.value.trim() };
    const chosen = checkedModels();
    b.allowed_models = chosen.length ? chosen : null; // null: every model
    b.default_strategy = strategy.value.trim() || null;
    const whole = (input, label) => {
      if (input.value === '') return null;
      const n = Number(input.value);
      if (!Number.isInteger(n) || n < 1) throw new Error(`${label} must be a whole number of at least 1 (or empty for no limit).`);
      return n;
    };
    b.rpm = whole(rpm, 'Requests per minute');
    b.tpm = whole(tpm, 'Tokens per minute');
    if (budget.value === '') b.budget_usd = null;
    else {
      const n = Number(budget.value);
      if (!Number.isFinite(n) || n < 0) throw new Error('The budget must be a number of dollars, 0 or more (or empty for no budget).');
      b.budget_usd = n;
    }
    b.budget_period = period.value;
    return b;
  }

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    let b;
    try {
      b = body();
      if (!b.name) throw new Error('A project needs a name.');
    } catch (e) {
      ctx.showError('projects', e);
      return;
    }
    submit.disabled = true;
    try {
      if (editing) {
        if (b.name === editing.name) delete b.name; // unchanged: not a rename
        const saved = await sendJson('PATCH', `/admin/projects/${encodeURIComponent(editing.name)}`, b, { signal: ctx.signal });
        status.say(`Project ${saved.name} saved.`);
        stopEdit();
      } else {
        const saved = await sendJson('POST', '/admin/projects', b, { signal: ctx.signal });
        status.say(`Project ${saved.name} created.`);
        form.reset();
        modelChecks([]);
      }
      ctx.clearError('projects');
      await load();
    } catch (e) {
      ctx.showError('projects', e);
    } finally {
      submit.disabled = false;
    }
  });

  reload();
  return () => {};
}

/** Spend against budget: a bar (CSS width set through the CSSOM, which the CSP allows). */
function budgetCell(p) {
  const spent = p.budget_spent_usd;
  const periodText = p.budget_period === 'day' ? 'today' : 'this month';
  if (p.budget_usd === null || p.budget_usd === undefined) {
    return h('span', { 'data-testid': 'budget' }, spent !== undefined && spent !== null ? `${usd(spent)} ${periodText} · no budget` : 'no budget');
  }
  const used = spent || 0;
  const ratio = p.budget_usd > 0 ? used / p.budget_usd : used > 0 ? 1 : 0;
  const fill = h('span', { class: 'bar-fill' });
  fill.style.width = `${Math.min(100, ratio * 100).toFixed(1)}%`;
  const bar = h(
    'span',
    {
      class: ['bar', ratio >= 1 ? 'over' : ratio >= 0.8 ? 'near' : ''],
      role: 'meter',
      'aria-valuemin': '0',
      'aria-valuemax': String(p.budget_usd),
      'aria-valuenow': String(used),
      'aria-label': `Spend ${periodText}`,
      'data-testid': 'budget-bar',
    },
    fill,
  );
  return h('span', { class: 'budget', 'data-testid': 'budget' }, bar, h('span', { class: 'budget-text', text: `${spent === undefined || spent === null ? DASH : usd(used)} of ${usd(p.budget_usd)} ${periodText} (${percent(ratio)})` }));
}

function percent(ratio) {
  if (ratio > 0 && ratio < 0.0001) return 'under 0.01%';
  return `${(ratio * 100).toFixed(ratio < 0.1 ? 2 : 0)}%`;
}
