/**
 * Form fields generated from a workload's JSON Schema (as pydantic writes it).
 *
 * Each property becomes one labelled input: a select for an enum, a checkbox
 * for a boolean, a number input (with the schema's bounds as hints) for an
 * integer or a number, a text input otherwise; an array of numbers or
 * strings is typed comma-separated. Optional fields (`anyOf [T, null]`)
 * may be left empty: an empty field is left out of the parameters, so the
 * workload's own default applies. The browser does not block submission on
 * the bounds: the server validates, and its message is shown at the field.
 */
import { ISchema } from './api';

export interface IFieldInfo {
  name: string;
  schema: ISchema;
  kind: 'enum' | 'boolean' | 'integer' | 'number' | 'string' | 'array' | 'json';
  nullable: boolean;
  required: boolean;
}

/** Follow a local `$ref` (`#/$defs/Name`) and merge a single-entry `allOf`. */
export function resolveSchema(schema: ISchema, root: ISchema): ISchema {
  let current = schema;
  for (let depth = 0; depth < 8; depth++) {
    if (current.$ref && current.$ref.startsWith('#/')) {
      const parts = current.$ref.slice(2).split('/');
      let target: any = root;
      for (const part of parts) {
        target = target?.[part];
      }
      const { $ref: _ref, ...rest } = current;
      current = { ...(target ?? {}), ...rest };
      continue;
    }
    if (current.allOf && current.allOf.length === 1) {
      const { allOf, ...rest } = current;
      current = { ...allOf[0], ...rest };
      continue;
    }
    break;
  }
  return current;
}

export function describeField(name: string, raw: ISchema, root: ISchema): IFieldInfo {
  let schema = resolveSchema(raw, root);
  let nullable = false;
  const variants = schema.anyOf ?? schema.oneOf;
  if (variants) {
    const resolved = variants.map(v => resolveSchema(v, root));
    const concrete = resolved.filter(v => v.type !== 'null');
    nullable = concrete.length < resolved.length;
    if (concrete.length === 1) {
      const { anyOf: _a, oneOf: _o, ...outer } = schema;
      schema = { ...concrete[0], ...outer };
    }
  }
  let type = Array.isArray(schema.type)
    ? schema.type.find(t => t !== 'null')
    : schema.type;
  if (Array.isArray(schema.type) && schema.type.includes('null')) {
    nullable = true;
  }
  let kind: IFieldInfo['kind'];
  if (schema.enum) {
    kind = 'enum';
  } else if (schema.const !== undefined) {
    kind = 'enum';
    schema = { ...schema, enum: [schema.const] };
  } else if (type === 'boolean') {
    kind = 'boolean';
  } else if (type === 'integer') {
    kind = 'integer';
  } else if (type === 'number') {
    kind = 'number';
  } else if (type === 'string') {
    kind = 'string';
  } else if (type === 'array') {
    kind = 'array';
  } else {
    kind = 'json';
    type = undefined;
  }
  const required = (root.required ?? []).includes(name);
  return { name, schema, kind, nullable, required };
}

export function fieldsOf(root: ISchema): IFieldInfo[] {
  return Object.entries(root.properties ?? {}).map(([name, schema]) =>
    describeField(name, schema, root)
  );
}

/** One generated input, able to read its value back as JSON data. */
export class SchemaField {
  readonly node: HTMLElement;
  readonly input: HTMLInputElement | HTMLSelectElement;
  readonly message: HTMLElement;

  constructor(
    readonly info: IFieldInfo,
    readonly key: string
  ) {
    const { schema, kind, name } = info;
    this.node = document.createElement('div');
    this.node.className = 'rtlib-Field';
    this.node.dataset.field = key;

    const label = document.createElement('label');
    label.className = 'rtlib-Field-label';
    const id = `rtlib-field-${key.replace(/[^A-Za-z0-9_-]/g, '-')}-${++SchemaField._count}`;
    label.htmlFor = id;
    label.textContent = schema.title ?? name;
    if (info.required) {
      label.textContent += ' *';
    }

    if (kind === 'enum') {
      const select = document.createElement('select');
      select.className = 'jp-mod-styled';
      if (info.nullable || !info.required) {
        const none = document.createElement('option');
        none.value = '';
        none.textContent = schema.default === undefined || schema.default === null ? '—' : `default (${String(schema.default)})`;
        select.appendChild(none);
      }
      for (const value of schema.enum ?? []) {
        const option = document.createElement('option');
        option.value = JSON.stringify(value);
        option.textContent = String(value);
        select.appendChild(option);
      }
      if (schema.default !== undefined && schema.default !== null) {
        select.value = JSON.stringify(schema.default);
      }
      this.input = select;
    } else {
      const input = document.createElement('input');
      input.className = 'jp-mod-styled';
      if (kind === 'boolean') {
        input.type = 'checkbox';
        input.checked = schema.default === true;
        this.node.classList.add('rtlib-mod-checkbox');
      } else if (kind === 'integer' || kind === 'number') {
        input.type = 'number';
        input.step = kind === 'integer' ? '1' : 'any';
        const min = schema.minimum ?? schema.exclusiveMinimum;
        const max = schema.maximum ?? schema.exclusiveMaximum;
        if (min !== undefined) {
          input.min = String(min);
        }
        if (max !== undefined) {
          input.max = String(max);
        }
        input.value = typeof schema.default === 'number' ? String(schema.default) : '';
      } else {
        input.type = 'text';
        if (kind === 'array' && Array.isArray(schema.default)) {
          input.value = schema.default.join(', ');
        } else if (kind === 'json' && schema.default !== undefined && schema.default !== null) {
          input.value = JSON.stringify(schema.default);
        } else if (typeof schema.default === 'string') {
          input.value = schema.default;
        }
      }
      input.placeholder = this._placeholder();
      this.input = input;
    }
    this.input.id = id;
    this.input.name = key;

    this.message = document.createElement('div');
    this.message.className = 'rtlib-Field-message';
    this.message.setAttribute('role', 'alert');

    const help = document.createElement('div');
    help.className = 'rtlib-Field-help';
    help.textContent = [schema.description, this._bounds()].filter(Boolean).join(' · ');

    if (kind === 'boolean') {
      label.prepend(this.input);
      this.node.append(label);
    } else {
      this.node.append(label, this.input);
    }
    if (help.textContent) {
      this.node.append(help);
    }
    this.node.append(this.message);
    this.input.addEventListener('input', () => this.setError(null));
    this.input.addEventListener('change', () => this.setError(null));
  }

  /** The value to send, or undefined to leave the parameter out (server default). */
  get value(): unknown {
    const { kind } = this.info;
    if (kind === 'boolean') {
      return (this.input as HTMLInputElement).checked;
    }
    const text = this.input.value.trim();
    if (text === '') {
      return undefined;
    }
    switch (kind) {
      case 'enum':
        return JSON.parse(text);
      case 'integer':
      case 'number': {
        const n = Number(text);
        // Send what was typed when it is not a number: the server names the problem.
        return Number.isFinite(n) ? n : text;
      }
      case 'array': {
        const itemType = this.info.schema.items?.type;
        const parts = text.split(',').map(p => p.trim()).filter(p => p !== '');
        if (itemType === 'number' || itemType === 'integer') {
          return parts.map(p => (Number.isFinite(Number(p)) ? Number(p) : p));
        }
        return parts;
      }
      case 'json':
        try {
          return JSON.parse(text);
        } catch {
          return text;
        }
      default:
        return this.input.value;
    }
  }

  setError(message: string | null): void {
    this.message.textContent = message ?? '';
    this.node.classList.toggle('rtlib-mod-error', !!message);
    if (message) {
      this.input.setAttribute('aria-invalid', 'true');
    } else {
      this.input.removeAttribute('aria-invalid');
    }
  }

  private _placeholder(): string {
    const { kind, nullable, schema } = this.info;
    if (kind === 'array') {
      return 'comma-separated values';
    }
    if (nullable && (schema.default === null || schema.default === undefined)) {
      return 'empty: automatic';
    }
    return '';
  }

  private _bounds(): string {
    const s = this.info.schema;
    const parts: string[] = [];
    if (s.minimum !== undefined) {
      parts.push(`≥ ${s.minimum}`);
    }
    if (s.exclusiveMinimum !== undefined) {
      parts.push(`> ${s.exclusiveMinimum}`);
    }
    if (s.maximum !== undefined) {
      parts.push(`≤ ${s.maximum}`);
    }
    if (s.exclusiveMaximum !== undefined) {
      parts.push(`< ${s.exclusiveMaximum}`);
    }
    return parts.join(', ');
  }

  private static _count = 0;
}
