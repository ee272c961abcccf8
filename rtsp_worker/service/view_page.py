"""The view's two pages, inline HTML + CSS + JavaScript: no build step, nothing fetched from outside the box.

The grid (`/`) polls `/view/api/state` (cameras, states, rates) and `/events` once a second, adds and
removes tiles as cameras come and go, and refreshes each streaming camera's picture from its latest.jpg
(one request at a time per tile, never a stream per tile: browsers open at most 6 connections per host). A
camera that is not streaming shows its state instead of its last picture. The camera page (`/view/{name}`)
shows the MJPEG stream. Nothing here holds a token: the session cookie (HttpOnly) rides along by itself.
"""

from __future__ import annotations

import html
import json

_STYLE = """
body{margin:0;font-family:system-ui,sans-serif;background:#111;color:#ddd}
header{padding:.5em 1em;background:#1d1d1d;display:flex;gap:1em;align-items:baseline}
header h1{font-size:1.1em;margin:0} a{color:#7cf}
main{display:flex;gap:1em;padding:1em;align-items:flex-start}
#grid{flex:3;display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:.8em}
.tile{background:#1b1b1b;border-radius:6px;overflow:hidden;position:relative}
.tile .pic{position:relative;aspect-ratio:16/9;background:#000;display:flex;align-items:center;justify-content:center}
.tile img,.big img{width:100%;height:100%;object-fit:contain;display:block}
.tile .down,.big .down{position:absolute;inset:0;display:none;align-items:center;justify-content:center;
  font-size:1.4em;font-weight:bold;color:#f77;background:#000c;text-transform:uppercase}
.tile.is-down .down,.big.is-down .down{display:flex} .tile.is-down img,.big.is-down img{visibility:hidden}
.tile .meta{padding:.4em .6em;font-size:.85em;display:flex;flex-wrap:wrap;gap:.3em .9em}
.state{font-weight:bold}.state.streaming{color:#6d6}.state.other{color:#f77}
aside{flex:1;min-width:260px;background:#1b1b1b;border-radius:6px;padding:.6em}
aside h2{font-size:1em;margin:.2em 0 .5em} #events{list-style:none;padding:0;margin:0;font-size:.82em}
#events li{padding:.3em 0;border-bottom:1px solid #2a2a2a}
.big{position:relative;flex:3;background:#000}
"""

_COMMON_JS = """
const $ = (s, e=document) => e.querySelector(s);
function el(tag, attrs={}, text){const e=document.createElement(tag);
  for(const[k,v]of Object.entries(attrs))e.setAttribute(k,v); if(text!==undefined)e.textContent=text; return e;}
function fmt(v){return v===null||v===undefined?'-':v;}
let lastTs = 0;
const seen = new Set();
async function pollEvents(camera){
  try{
    const q = new URLSearchParams({since: String(lastTs), limit: '50'}); if(camera) q.set('camera', camera);
    const r = await fetch('/events?'+q, {cache:'no-store'});
    if(r.ok){
      const list = $('#events');
      for(const e of (await r.json()).events){
        const key = e.id || (e.camera+e.frame+e.track_id+e.kind+e.direction);
        if(seen.has(key)) continue; seen.add(key); lastTs = Math.max(lastTs, e.ts);
        const li = el('li', {'class':'event', 'data-camera': e.camera, 'data-kind': e.kind});
        const when = new Date(e.ts*1000).toLocaleTimeString();
        li.append(el('span', {}, `${when} ${e.camera}: #${e.track_id} ${e.class} ${e.kind} ${e[e.kind]} ${e.direction} `));
        if(e.snapshot) li.append(el('a', {href:'/media/'+e.snapshot, target:'_blank', 'class':'snapshot'}, 'snapshot'), ' ');
        if(e.clip) li.append(el('a', {href:'/media/'+(e.clip.path||e.clip), target:'_blank', 'class':'clip'}, 'clip'));
        list.prepend(li);
        while(list.children.length > 100) list.lastChild.remove();
      }
    }
  }catch(err){}
  setTimeout(() => pollEvents(camera), 1000);
}
"""

_GRID_JS = """
const tiles = new Map();
const period = () => 1000 / (window.viewFps || 5);
function makeTile(name){
  const t = el('div', {'class':'tile', 'data-camera': name, id: 'tile-'+name});
  const a = el('a', {href:'/view/'+encodeURIComponent(name)}); const pic = el('div', {'class':'pic'});
  const img = el('img', {alt: name}); pic.append(img, el('div', {'class':'down'}, ''));
  a.append(pic); t.append(a);
  const meta = el('div', {'class':'meta'});
  meta.append(el('b', {}, name), el('span', {'class':'state'}), el('span', {'class':'fps'}),
              el('span', {'class':'drops'}), el('span', {'class':'counts'}));
  t.append(meta); $('#grid').append(t);
  const tile = {el: t, img, name, streaming: false, loading: false, alive: true};
  img.onload = () => { tile.loading = false; t.dataset.frames = String(Number(t.dataset.frames||0)+1);
                       setTimeout(() => refresh(tile), period()); };
  img.onerror = () => { tile.loading = false; setTimeout(() => refresh(tile), 1000); };
  tiles.set(name, tile); refresh(tile); return tile;
}
function refresh(tile){
  if(!tile.alive || tile.loading) return;
  if(!tile.streaming){ setTimeout(() => refresh(tile), 1000); return; }
  tile.loading = true; tile.img.src = '/cameras/'+encodeURIComponent(tile.name)+'/latest.jpg?t='+Date.now();
}
async function pollState(){
  try{
    const r = await fetch('/view/api/state', {cache:'no-store'});
    if(r.status === 401){ location.href = '/login?next=/'; return; }
    const s = await r.json(); window.viewFps = s.fps;
    const names = new Set(s.cameras.map(c => c.name));
    for(const [name, tile] of tiles) if(!names.has(name)){ tile.alive = false; tile.el.remove(); tiles.delete(name); }
    for(const c of s.cameras){
      const tile = tiles.get(c.name) || makeTile(c.name);
      const up = c.state === 'streaming'; tile.streaming = up;
      tile.el.classList.toggle('is-down', !up); tile.el.dataset.state = c.state;
      $('.down', tile.el).textContent = c.state + (c.last_error ? ': '+c.last_error : '');
      const st = $('.state', tile.el); st.textContent = c.state; st.className = 'state '+(up?'streaming':'other');
      $('.fps', tile.el).textContent = `decode ${fmt(c.decode_fps)} fps, processed ${fmt(c.processed_fps)} fps`;
      $('.drops', tile.el).textContent = `drops ${c.dropped}, reconnects ${c.reconnects}`;
      $('.counts', tile.el).textContent = c.analytics || '';
    }
    $('#count').textContent = `${s.cameras.length} cameras`;
  }catch(err){ $('#count').textContent = 'worker unreachable'; }
  setTimeout(pollState, 1000);
}
pollState(); pollEvents(null);
"""

_CAMERA_JS = """
async function pollState(){
  try{
    const r = await fetch('/view/api/state', {cache:'no-store'});
    if(r.status === 401){ location.href = '/login?next='+encodeURIComponent(location.pathname); return; }
    const s = await r.json(); const c = s.cameras.find(x => x.name === CAMERA); const big = $('.big');
    const up = !!c && c.state === 'streaming'; big.classList.toggle('is-down', !up);
    big.dataset.state = c ? c.state : 'removed';
    $('.down', big).textContent = c ? c.state + (c.last_error ? ': '+c.last_error : '') : 'removed';
    if(c){ $('#info').textContent = `${c.state}, decode ${fmt(c.decode_fps)} fps, processed ${fmt(c.processed_fps)} `
      + `fps, drops ${c.dropped}, reconnects ${c.reconnects} ${c.analytics||''}`; }
    const img = $('#stream');  // reconnect the stream when the camera comes back
    if(up && img.dataset.on !== '1'){ img.src = '/cameras/'+encodeURIComponent(CAMERA)+'/stream.mjpeg?t='+Date.now(); img.dataset.on = '1'; }
    if(!up && img.dataset.on === '1'){ img.removeAttribute('src'); img.dataset.on = '0'; }
  }catch(err){}
  setTimeout(pollState, 1000);
}
$('#stream').onerror = () => { $('#stream').dataset.on = '0'; };
pollState(); pollEvents(CAMERA);
"""


def _page(title: str, body: str, script: str) -> str:
    return (f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<style>{_STYLE}</style></head><body>{body}<script>{_COMMON_JS}{script}</script></body></html>\n")


def grid_page() -> str:
    body = ('<header><h1>rtsp-worker</h1><span id="count"></span></header><main><div id="grid"></div>'
            '<aside><h2>Latest events</h2><ul id="events"></ul></aside></main>')
    return _page("rtsp-worker: cameras", body, _GRID_JS)


def camera_page(name: str) -> str:
    body = (f'<header><h1>{html.escape(name)}</h1><a href="/">all cameras</a><span id="info"></span></header>'
            '<main><div class="big"><img id="stream" alt="live"><div class="down"></div></div>'
            '<aside><h2>Recent events</h2><ul id="events"></ul></aside></main>')
    # The name as a JS string literal: json.dumps escapes quotes; "</" is escaped so it cannot end the script.
    literal = json.dumps(name).replace("</", "<\\/")
    return _page(f"rtsp-worker: {name}", body, f"const CAMERA = {literal};\n" + _CAMERA_JS)
